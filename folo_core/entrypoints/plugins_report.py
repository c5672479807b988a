"""What ``folo plugins`` reports: installed plugins, and ``auto``'s choice per kind."""

from __future__ import annotations

from typing import Any

from folo_core.config import EngineConfig, resolve_engine_config
from folo_core.engine.selection import quantization_config, selection_context
from folo_core.hookspecs import PLUGIN_KINDS
from folo_core.plugins import FoloPluginManager, get_plugin_manager
from folo_core.registry import SelectionContext



def plugins_report() -> dict[str, Any]:
    manager = get_plugin_manager()
    return {"plugins": [info.as_dict() for info in manager.plugins.values()]}


def _context(config: EngineConfig) -> tuple[SelectionContext, EngineConfig | None]:
    """The selection context, and the config resolved against the checkpoint if one is named."""
    if config.model.model is None:
        dtype = config.model.dtype if config.model.dtype != "auto" else "bfloat16"
        import torch

        return SelectionContext(device=config.model.resolved_device(), dtype=getattr(torch, dtype),
                                block_size=config.cache.block_size), None
    from folo_core.hf_utils import load_hf_config

    resolved = resolve_engine_config(config, load_hf_config(config.model.model))
    return selection_context(resolved), resolved


def _quantization_report(config: EngineConfig, manager: FoloPluginManager,
                         ctx: SelectionContext) -> dict[str, list[dict[str, Any]]]:
    """The checkpoint's quantizer and the kernels its linears would run on here."""
    quant = quantization_config(config, manager, ctx)
    picked = ("picked (asked for by name)" if config.model.quantization
              else "picked: the checkpoint's quantization settings name it")
    unused = f"not asked for: the checkpoint uses {quant.name!r}" if quant else "the checkpoint is not quantized"
    rows = [{"name": entry.name, "plugin": entry.plugin, "priority": entry.priority, "reasons": [],
             "selected": quant is not None and entry.name == quant.name,
             "why": picked if quant is not None and entry.name == quant.name else unused}
            for entry in manager.registry("quantizer").entries()]
    out = {"quantizer": rows}
    if quant is not None:
        candidates = quant.kernel_candidates(ctx)
        chosen = next((name for name, reasons in candidates if not reasons), None)
        out["quantization_kernel"] = [
            {"name": name, "plugin": quant.name, "priority": len(candidates) - i, "reasons": reasons,
             "selected": name == chosen, "why": _why(name, reasons, chosen, "auto")}
            for i, (name, reasons) in enumerate(candidates)]
    return out


def explain_report(config: EngineConfig) -> dict[str, list[dict[str, Any]]]:
    """For each kind: every implementation in ``auto`` order, why it is or is not picked, the pick."""
    manager = get_plugin_manager()
    ctx, resolved = _context(config)
    out: dict[str, list[dict[str, Any]]] = {}
    # Every kind a config field names (for a structured-output backend, ``auto`` is per request:
    # the pick below, or the next eligible one that supports the request).
    for plugin_kind in (k for k in PLUGIN_KINDS if k.config_field):
        kind, wanted = plugin_kind.name, plugin_kind.configured(config)
        report = manager.registry(kind).explain(ctx)
        chosen = next((e.name for e, reasons in report if not reasons and wanted in ("auto", e.name)), None)
        out[kind] = [{"name": entry.name, "plugin": entry.plugin, "priority": entry.priority,
                      "reasons": reasons, "selected": entry.name == chosen,
                      "why": _why(entry.name, reasons, chosen, wanted)}
                     for entry, reasons in report]
    if resolved is not None:
        out.update(_quantization_report(resolved, manager, ctx))
    return out


def _why(name: str, reasons: list[str], chosen: str | None, wanted: str) -> str:
    """One line for ``folo plugins --explain``: the pick, or why not this one."""
    if reasons:
        return "not eligible: " + "; ".join(reasons)
    if name == chosen:
        return "picked (asked for by name)" if wanted == name else "picked: highest-priority eligible"
    if wanted == "auto":
        return f"eligible, but {chosen!r} ranks higher"
    return f"eligible, but {wanted!r} was asked for"
