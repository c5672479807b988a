"""``GPTQConfig``: a checkpoint's GPTQ ``quantization_config``, validated field by field.

Read from ``config.json`` (``quantization_config``) or, for older AutoGPTQ
checkpoints, ``quantize_config.json``. Which linears are quantized follows the
checkpoint: ``modules_in_block_to_quantize`` (transformers/optimum) lists them,
and gptqmodel's ``dynamic`` rules (first regex match wins; ``-:`` skips the module,
otherwise its keys override bits / group_size / desc_act / sym for it).
Embeddings and the LM head are never quantized here.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from torch import nn

from folo_core.models import CheckpointError
from folo_core.quantization import QuantizationConfig, QuantizationMethod, QuantizeOptions
from folo_core.registry import SelectionContext
from folo_plugins.gptq.kernels import kernel_candidates
from folo_plugins.gptq.linear import GPTQLinearMethod
from folo_plugins.gptq.packing import CHECKPOINT_FORMATS
from folo_plugins.gptq.scheme import GPTQScheme, scheme_problem

# Our fused linears -> the checkpoint modules they hold (vLLM's packed_modules_mapping).
PACKED_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
_OVERRIDABLE = ("bits", "group_size", "desc_act", "sym")


def _field(config: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = config.get(key, default)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise CheckpointError(f"quantization_config.{key}={value!r} must be {kind.__name__}")
    return value


def _validate_scheme(scheme: GPTQScheme, where: str) -> GPTQScheme:
    problem = scheme_problem(scheme.bits, scheme.group_size)
    if problem:
        raise CheckpointError(f"{where}{problem}")
    return scheme


class GPTQConfig(QuantizationConfig):
    """GPTQ weight-only quantization (AutoGPTQ / gptqmodel checkpoints)."""

    name = "gptq"

    def __init__(self, scheme: GPTQScheme, dynamic: dict[str, dict[str, Any]] | None = None,
                 modules_in_block_to_quantize: list[str] | None = None) -> None:
        self.scheme = scheme
        self.dynamic = dynamic or {}
        self.modules_in_block_to_quantize = modules_in_block_to_quantize

    @classmethod
    def get_config_filenames(cls) -> list[str]:
        return ["quantize_config.json"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GPTQConfig":
        method = config.get("quant_method", "gptq")
        if method != "gptq":
            raise CheckpointError(f"quantization_config.quant_method={method!r} is not 'gptq'")
        fmt = config.get("checkpoint_format") or config.get("format") or "gptq"
        if fmt not in CHECKPOINT_FORMATS:
            raise CheckpointError(f"quantization_config.checkpoint_format={fmt!r} is not supported "
                                  f"(supported: {', '.join(CHECKPOINT_FORMATS)})")
        pack_dtype = config.get("pack_dtype", "int32")
        if pack_dtype != "int32":
            raise CheckpointError(f"quantization_config.pack_dtype={pack_dtype!r} is not supported (only 'int32')")
        if config.get("lm_head", False):
            raise CheckpointError("quantization_config.lm_head=true (a quantized LM head) is not supported")
        scheme = GPTQScheme(
            bits=_field(config, "bits", int, None),
            group_size=_field(config, "group_size", int, -1),
            desc_act=_field(config, "desc_act", bool, False),
            sym=_field(config, "sym", bool, True),
            checkpoint_format=fmt,
        )
        dynamic = config.get("dynamic") or {}
        if not isinstance(dynamic, dict):
            raise CheckpointError(f"quantization_config.dynamic={dynamic!r} must be a mapping of module patterns")
        for pattern, overrides in dynamic.items():
            unknown = set(overrides) - set(_OVERRIDABLE) if isinstance(overrides, dict) else {"(not a dict)"}
            if unknown and not pattern.startswith("-:"):
                raise CheckpointError(f"quantization_config.dynamic[{pattern!r}] overrides {sorted(unknown)}; "
                                      f"supported: {', '.join(_OVERRIDABLE)}")
        blocks = config.get("modules_in_block_to_quantize")
        modules = [name for block in blocks for name in block] if blocks else None
        return cls(_validate_scheme(scheme, "quantization_config."), dynamic, modules)

    def scheme_for(self, module_name: str) -> GPTQScheme | None:
        """The scheme of one checkpoint module, or None where it is not quantized."""
        if self.modules_in_block_to_quantize is not None and not any(
                module_name.endswith("." + name) for name in self.modules_in_block_to_quantize):
            return None
        for pattern, overrides in self.dynamic.items():
            negative = pattern.startswith("-:")
            if re.match(pattern[2:] if pattern.startswith(("-:", "+:")) else pattern, module_name):
                if negative:
                    return None
                return _validate_scheme(replace(self.scheme, **overrides), f"quantization_config.dynamic[{pattern!r}].")
        return self.scheme

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizationMethod | None:
        parent, _, leaf = prefix.rpartition(".")
        names = [f"{parent}.{shard}" for shard in PACKED_MODULES[leaf]] if leaf in PACKED_MODULES else [prefix]
        schemes = {self.scheme_for(name) for name in names}
        if len(schemes) > 1:
            raise CheckpointError(f"quantization_config quantizes the fused modules {', '.join(names)} "
                                  "differently; they share one layer here")
        scheme = schemes.pop()
        return None if scheme is None else GPTQLinearMethod(scheme)

    def kernel_candidates(self, ctx: SelectionContext) -> list[tuple[str, list[str]]]:
        return kernel_candidates(self.scheme, ctx)

    @classmethod
    def quantize_checkpoint(cls, model_path: str, output_path: str, options: QuantizeOptions) -> None:
        from folo_plugins.gptq.quantize import quantize_checkpoint  # gptqmodel: the optional "gptq" extra

        quantize_checkpoint(model_path, output_path, options)
