"""Which implementation of each plugin kind an engine runs, and why (also for ``folo plugins --explain``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from folo_core.config import EngineConfig
from folo_core.hf_utils import layer_sliding_windows
from folo_core.hookspecs import PLUGIN_KINDS
from folo_core.models import CheckpointError
from folo_core.plugins import FoloPluginManager
from folo_core.quantization import QuantizationConfig
from folo_core.registry import PluginSelectionError, Registry, RegistryEntry, SelectionContext


def model_geometry(hf_config: Any) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_size) from an HF config."""
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_size = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    return num_heads, num_kv_heads, head_size


def selection_context(config: EngineConfig) -> SelectionContext:
    hf_config = config.model.hf_config
    num_heads, num_kv_heads, head_size = model_geometry(hf_config)
    return SelectionContext(
        device=config.model.resolved_device(),
        dtype=config.model.torch_dtype,
        head_size=head_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        block_size=config.cache.block_size,
        architecture=(getattr(hf_config, "architectures", None) or [None])[0],
        options={
            "enable_chunked_prefill": config.scheduler.enable_chunked_prefill,
            "enable_prefix_caching": config.cache.enable_prefix_caching is True,
            "tensor_parallel_size": config.parallel.tensor_parallel_size,
            "data_parallel_size": config.parallel.data_parallel_size,
            "sliding_window": any(w is not None for w in layer_sliding_windows(hf_config)),
            "logits_soft_cap": bool(getattr(hf_config, "attn_logit_softcapping", None)),
        },
    )


def quantization_config(config: EngineConfig, plugins: FoloPluginManager,
                        ctx: SelectionContext) -> QuantizationConfig | None:
    """The checkpoint's quantization scheme (or the one forced by ``quantization``)."""
    hf_quant = getattr(config.model.hf_config, "quantization_config", None)
    if hf_quant is not None and not isinstance(hf_quant, dict):
        hf_quant = hf_quant.to_dict()
    name = config.model.quantization or (hf_quant or {}).get("quant_method")
    registry = plugins.registry("quantizer")
    if hf_quant is None:
        name, hf_quant = quantization_file(config.model.model, registry, name)
    if name is None:
        return None
    entry = registry.select(name, ctx)
    return entry.impl.from_config(hf_quant or {})


def quantization_file(model_path: str, registry: Registry, name: str | None) -> tuple[str | None, dict | None]:
    """(quantizer, settings) from a quantizer's own file beside config.json, e.g. AutoGPTQ's
    ``quantize_config.json``; ``(name, None)`` when there is none."""
    for entry in [registry.get(name)] if name else registry.entries():
        for filename in entry.impl.get_config_filenames():
            path = Path(model_path) / filename
            if path.is_file():
                try:
                    return entry.name, json.loads(path.read_text())
                except ValueError as exc:
                    raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return name, None


@dataclass
class SelectedPlugins:
    """The implementation picked for each kind, as ``folo plugins --explain`` reports it."""

    model: str
    attention_backend: str
    sampler: str
    kv_cache_manager: str
    scheduler: str
    quantization: str | None
    executor: str


@dataclass
class PluginSelection:
    """The resolved entries of every per-engine kind, the quantization scheme and prefix caching."""

    ctx: SelectionContext
    model: RegistryEntry
    attention_backend: RegistryEntry
    sampler: RegistryEntry
    kv_cache_manager: RegistryEntry
    scheduler: RegistryEntry
    executor: RegistryEntry
    quant_config: QuantizationConfig | None
    enable_prefix_caching: bool
    proposer: RegistryEntry | None = None  # with speculative_config

    def summary(self) -> SelectedPlugins:
        return SelectedPlugins(self.ctx.architecture, self.attention_backend.name, self.sampler.name,
                               self.kv_cache_manager.name, self.scheduler.name,
                               self.quant_config.name if self.quant_config else None, self.executor.name)


def select_plugins(config: EngineConfig, plugins: FoloPluginManager) -> PluginSelection:
    """Resolve the model by architecture, the quantizer by checkpoint, the per-engine kinds by
    their config fields (``auto`` by eligibility), and whether prefix caching is on."""
    ctx = selection_context(config)
    if ctx.architecture is None:
        raise PluginSelectionError("config.json has no 'architectures' entry")
    model = plugins.registry("model").get(ctx.architecture)
    quant_config = quantization_config(config, plugins, ctx)
    picked = {kind.name: plugins.registry(kind.name).select(kind.configured(config), ctx)
              for kind in PLUGIN_KINDS if kind.per_engine}
    kv, attn = picked["kv_cache_manager"], picked["attention_backend"]
    enable_caching = config.cache.enable_prefix_caching
    if enable_caching and not kv.impl.supports_prefix_caching:
        raise PluginSelectionError(
            f"kv_cache_manager {kv.name!r} does not support prefix caching; set enable_prefix_caching=False")
    if enable_caching is None:  # on wherever both the KV manager and the backend support it
        enable_caching = kv.impl.supports_prefix_caching and attn.impl.capabilities.prefix_caching
    return PluginSelection(ctx, model, attn, picked["sampler"], kv, picked["scheduler"], picked["executor"],
                           quant_config, bool(enable_caching),
                           speculative_proposer(config, plugins, picked["sampler"]))


def speculative_proposer(config: EngineConfig, plugins: FoloPluginManager,
                         sampler: RegistryEntry) -> RegistryEntry | None:
    """The proposer ``speculative_config`` names; the sampler must be able to verify drafts."""
    spec = config.scheduler.speculative_config
    if spec is None:
        return None
    if not sampler.impl.supports_speculative_decoding():
        raise PluginSelectionError(f"sampler {sampler.name!r} has no target_probs, so it cannot verify "
                                   "draft tokens; unset speculative_config or pick another sampler")
    return plugins.registry("proposer").get(spec.method)
