"""Engine configuration: pydantic models with vLLM's field names.

Every field of every section is also a keyword of ``LLM(...)`` and a ``folo`` CLI
flag (``--max-model-len`` or ``--max_model_len``), and may come from a TOML/YAML
file, flat or in ``[model]`` / ``[cache]`` / ``[scheduler]`` / ``[parallel]`` tables.
Field names are unique across sections, so a flat mapping is unambiguous.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from folo_core.hf_utils import max_positions
from folo_core.logger import init_logger
from folo_core.platform import resolve_auto_dtype

logger = init_logger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}

DTypeName = Literal["auto", "float32", "float", "bfloat16", "float16", "half"]


class ConfigError(ValueError):
    """A configuration value a user must change; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    section: ClassVar[str]


class ModelConfig(_Section):
    """What to run and how: checkpoint, dtype, length limit, device and model-side plugins."""

    section: ClassVar[str] = "model"

    model: str | None = Field(None, description="Local HF checkpoint directory; default: the embedded SmolLM2-135M-Instruct.")
    tokenizer: str | None = Field(None, description="Tokenizer directory (default: the model directory).")
    skip_tokenizer_init: bool = Field(False, description="Run without a tokenizer: prompts must be token ids, outputs carry no text.")
    dtype: DTypeName = Field("auto", description="Weight and activation dtype; auto = the checkpoint's dtype, or float32 on a CPU without native bf16/fp16 matmul.")
    max_model_len: int | None = Field(None, gt=0, description="Prompt + output length limit (default: the model's max_position_embeddings).")
    seed: int = Field(0, description="Seed for requests without their own seed.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu.")
    quantization: str | None = Field(None, description="Quantization method (default: from the checkpoint's quantization_config).")
    attention_backend: str = Field("auto", description="Attention backend plugin name.")
    sampler: str = Field("auto", description="Sampler plugin name.")
    structured_outputs_backend: str = Field(
        "auto", description="Structured-output backend plugin name (guidance, alias llguidance; xgrammar); "
                            "auto = per request, the first installed one that supports it.")
    enforce_eager: bool = Field(
        default_factory=lambda: os.environ.get("FOLO_ENFORCE_EAGER", "0") == "1",
        description="Run the model eagerly: no torch.compile of the forward or of attention kernels "
                    "(they compile once per process, at start-up). Default: FOLO_ENFORCE_EAGER=1, else off.")
    max_logprobs: int = Field(20, ge=-1, description="Most log-probs a request may ask for per token (vLLM's default); -1 = the vocabulary size.")
    trust_remote_code: bool = Field(False, description="Accepted for vLLM compatibility; Folo never runs code from a checkpoint.")

    _hf_config: Any = PrivateAttr(None)

    @field_validator("structured_outputs_backend")
    @classmethod
    def _backend_alias(cls, name: str) -> str:
        return "guidance" if name == "llguidance" else name  # the library's name for vLLM's "guidance"

    @property
    def torch_dtype(self) -> torch.dtype:
        """The resolved dtype (call ``EngineConfig.resolve`` first for ``auto``)."""
        if self.dtype == "auto":
            raise ConfigError("dtype 'auto' is resolved only once the checkpoint is read")
        return _DTYPES[self.dtype]

    @property
    def hf_config(self) -> Any:
        return self._hf_config

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' was requested but torch sees no CUDA device")
        return self.device


class CacheConfig(_Section):
    """Paged KV cache: block size, memory budget and the KV-cache manager plugin."""

    section: ClassVar[str] = "cache"

    block_size: int = Field(16, gt=0, le=4096, description="Tokens per KV block.")
    kv_cache_memory_bytes: int | None = Field(None, gt=0, description="KV cache budget in bytes (default: from free memory).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="CUDA: share of device memory for weights + KV cache (when kv_cache_memory_bytes is unset).")
    num_gpu_blocks_override: int | None = Field(None, gt=0, description="Fix the number of KV blocks exactly (vLLM's name; used on CPU too).")
    enable_prefix_caching: bool | None = Field(None, description="Reuse KV blocks of shared prefixes (default: on where supported).")
    kv_cache_manager: str = Field("auto", description="KV-cache manager plugin name.")


class SpeculativeConfig(BaseModel):
    """Speculative decoding (vLLM's ``speculative_config``): a proposer drafts tokens, one
    forward verifies them. Given as a dict keyword, a JSON ``--speculative-config`` or a
    table in the config file."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("ngram", description="Proposer plugin name.")
    num_speculative_tokens: int = Field(gt=0, le=32, description="Most draft tokens per request and step.")
    prompt_lookup_max: int | None = Field(None, gt=0, description="ngram: longest suffix matched (default 5, or prompt_lookup_min).")
    prompt_lookup_min: int | None = Field(None, gt=0, description="ngram: shortest suffix matched (default 2, or prompt_lookup_max).")
    disable_by_batch_size: int | None = Field(None, gt=0, description="No drafts in a step with at least this many requests.")

    @model_validator(mode="after")
    def _lookup_window(self) -> "SpeculativeConfig":
        if self.prompt_lookup_max is None:
            self.prompt_lookup_max = max(5, self.prompt_lookup_min or 0)
        if self.prompt_lookup_min is None:
            self.prompt_lookup_min = min(2, self.prompt_lookup_max)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min ({self.prompt_lookup_min}) is above prompt_lookup_max "
                             f"({self.prompt_lookup_max})")
        return self


class SchedulerConfig(_Section):
    """Continuous batching: token budget per step, concurrency, chunked prefill, policy."""

    section: ClassVar[str] = "scheduler"

    scheduler: str = Field("auto", description="Scheduler plugin name.")
    max_num_batched_tokens: int | None = Field(None, gt=0, description="Token budget of one engine step (default 2048, or max_model_len without chunked prefill).")
    max_num_seqs: int = Field(256, gt=0, description="Most requests running at once.")
    enable_chunked_prefill: bool = Field(True, description="Split long prompts across steps.")
    long_prefill_token_threshold: int = Field(0, ge=0, description="Cap on one request's prefill tokens per step (0 = no cap).")
    scheduling_policy: Literal["fcfs", "priority"] = Field("fcfs", description="fcfs, or priority (lower value first).")
    max_waiting_requests: int | None = Field(None, gt=0, description="Reject new requests while this many wait (server overload guard).")
    speculative_config: SpeculativeConfig | None = Field(None, description='Speculative decoding, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\' (JSON on the command line).')

    @field_validator("speculative_config", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # the CLI flag
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"speculative_config is not valid JSON: {exc}") from None
        return value


class ParallelConfig(_Section):
    """Parallelism: tensor-parallel ranks (the ``mp`` executor) and data-parallel replicas."""

    section: ClassVar[str] = "parallel"

    distributed_executor_backend: str = Field("auto", description="Executor plugin name (uni; auto picks by the parallel sizes).")

    tensor_parallel_size: int = Field(1, gt=0, description="Tensor-parallel ranks, one process each (the mp executor; gloo on CPU).")
    data_parallel_size: int = Field(1, gt=0, description="Engine-core replicas, one process each, each with its own scheduler and KV cache.")
    data_parallel_backend: Literal["auto", "mp", "ray"] = Field("auto", description="Where replicas run: local processes (mp), or Ray actors on any node of a Ray cluster (ray; RAY_ADDRESS or a local one); auto = ray when distributed_executor_backend is ray, else mp.")
    data_parallel_routing: Literal["tokens", "prefix"] = Field("tokens", description="Where a new request goes: the replica with the fewest outstanding tokens, or the one its first KV block hashes to (prefix-cache affinity).")

    @model_validator(mode="after")
    def _resolve_data_parallel_backend(self) -> "ParallelConfig":
        if self.data_parallel_backend == "auto":
            self.data_parallel_backend = "ray" if self.distributed_executor_backend == "ray" else "mp"
        if self.data_parallel_backend == "ray" and self.data_parallel_size > 1 and self.tensor_parallel_size > 1:
            raise ValueError("data-parallel replicas on Ray run one rank each for now: with "
                             "tensor_parallel_size > 1 use data_parallel_backend='mp'")
        return self


SECTIONS: tuple[type[_Section], ...] = (ModelConfig, CacheConfig, SchedulerConfig, ParallelConfig)


def _field_owner() -> dict[str, type[_Section]]:
    return {name: cls for cls in SECTIONS for name in cls.model_fields}


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or exc.title
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "invalid engine configuration: " + "; ".join(parts)


class EngineConfig(BaseModel):
    """All sections together; build it with ``from_kwargs``, ``from_file`` or ``from_cli_args``."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineConfig":
        """Distribute flat keywords (``LLM(model=..., block_size=...)``) to their sections."""
        owners = _field_owner()
        unknown = sorted(k for k in kwargs if k not in owners)
        if unknown:
            raise ConfigError(
                f"unknown engine option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(owners))}"
            )
        grouped: dict[str, dict[str, Any]] = {c.section: {} for c in SECTIONS}
        for key, value in kwargs.items():
            grouped[owners[key].section][key] = value
        try:
            return cls(**{c.section: c(**grouped[c.section]) for c in SECTIONS})
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "EngineConfig":
        """Read a TOML or YAML file, flat or sectioned; keyword overrides win."""
        flat = {**load_config_file(path), **overrides}
        return cls.from_kwargs(**flat)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """One flag per field; both ``--max-model-len`` and ``--max_model_len`` work."""
        for section in SECTIONS:
            group = parser.add_argument_group(f"{section.section} options")
            for name, info in section.model_fields.items():
                flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
                kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": info.description}
                annotation = info.annotation
                if annotation is bool or annotation == (bool | None):
                    kwargs["action"] = argparse.BooleanOptionalAction
                else:
                    kwargs["type"] = _cli_type(annotation)
                    choices = _literal_choices(annotation)
                    if choices:
                        kwargs["choices"] = choices
                group.add_argument(*flags, **kwargs)
        parser.add_argument("--config", dest="config_file", default=None,
                            help="TOML or YAML file with engine options (flags override it).")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, **extra: Any) -> "EngineConfig":
        owners = _field_owner()
        given = {k: v for k, v in vars(args).items() if k in owners}
        base = load_config_file(args.config_file) if getattr(args, "config_file", None) else {}
        return cls.from_kwargs(**{**base, **extra, **given})

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in (self.model, self.cache, self.scheduler, self.parallel):
            out.update(section.model_dump())
        return out


def _literal_choices(annotation: Any) -> list[str] | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None


def _cli_type(annotation: Any):
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if get_origin(base) is Literal:
        return str
    return base if base in (int, float, str) else str


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Flat dict of options from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml, .yml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of options")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in {c.section for c in SECTIONS} and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def resolve_engine_config(config: EngineConfig, hf_config: Any) -> EngineConfig:
    """Fill ``auto``/unset values from the checkpoint and check cross-field rules."""
    model = config.model.model_copy()
    model._hf_config = hf_config
    scheduler = config.scheduler.model_copy()

    if model.dtype == "auto":
        ckpt_dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(ckpt_dtype, str):
            ckpt_dtype = getattr(torch, ckpt_dtype, None)
        dtype, why = resolve_auto_dtype(ckpt_dtype or torch.float32, model.resolved_device())
        names = {v: k for k, v in _DTYPES.items() if k in ("float32", "bfloat16", "float16")}
        model.dtype = names[dtype]
        logger.info("dtype auto -> %s: %s", model.dtype, why)

    limit = max_positions(hf_config)
    if model.max_model_len is None:
        if limit is None:
            raise ConfigError("the checkpoint has no max_position_embeddings; set max_model_len")
        model.max_model_len = int(limit)
    elif limit is not None and model.max_model_len > limit:
        raise ConfigError(
            f"max_model_len={model.max_model_len} is larger than the model's "
            f"max_position_embeddings={hf_config.max_position_embeddings}"
            + (f" times its dynamic rope factor ({limit})" if limit != hf_config.max_position_embeddings else "")
        )

    if scheduler.max_num_batched_tokens is None:
        default = 2048
        scheduler.max_num_batched_tokens = (
            default if scheduler.enable_chunked_prefill else max(default, model.max_model_len)
        )
    if "max_num_seqs" not in config.scheduler.model_fields_set:
        scheduler.max_num_seqs = min(scheduler.max_num_seqs, scheduler.max_num_batched_tokens)
    if scheduler.max_num_batched_tokens < scheduler.max_num_seqs:
        raise ConfigError(
            f"max_num_batched_tokens ({scheduler.max_num_batched_tokens}) must be >= max_num_seqs "
            f"({scheduler.max_num_seqs}) so every running request can get one token per step"
        )
    if not scheduler.enable_chunked_prefill and scheduler.max_num_batched_tokens < model.max_model_len:
        raise ConfigError(
            f"max_num_batched_tokens ({scheduler.max_num_batched_tokens}) is smaller than "
            f"max_model_len ({model.max_model_len}): without chunked prefill the longest prompt "
            "must fit in one step; enable chunked prefill or raise max_num_batched_tokens"
        )
    return config.model_copy(update={"model": model, "scheduler": scheduler})
