"""Pluggy hook specifications: the only way implementations enter Folo.

Every hook hands the plugin a ``register(name, impl, *, priority=0)`` callable.
Built-in plugins and third-party packages use the same hooks through the
``folo`` entry-point group, so nothing built in is privileged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("folo")
hookimpl = pluggy.HookimplMarker("folo")

Register = Callable[..., None]
"""``register(name: str, impl: Any, *, priority: int = 0) -> None``."""


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register ``AttentionBackend`` subclasses by name."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Register ``Scheduler`` subclasses by name."""


@hookspec
def register_kv_cache_managers(register: Register) -> None:
    """Register ``KVCacheManager`` subclasses by name."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register ``Sampler`` subclasses by name."""


@hookspec
def register_quantizers(register: Register) -> None:
    """Register ``QuantizationConfig`` subclasses by quantization method name."""


@hookspec
def register_structured_output_backends(register: Register) -> None:
    """Register ``StructuredOutputBackend`` subclasses by name."""


@hookspec
def register_tool_parsers(register: Register) -> None:
    """Register ``ToolParser`` subclasses by name (``--tool-call-parser``)."""


@hookspec
def register_executors(register: Register) -> None:
    """Register ``Executor`` subclasses by name (``distributed_executor_backend``)."""


@hookspec
def register_proposers(register: Register) -> None:
    """Register speculative-decoding ``Proposer`` subclasses by name (``speculative_config["method"]``)."""


@hookspec
def register_models(register: Register) -> None:
    """Register model loaders by HF architecture name (``config.json`` ``architectures``)."""


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin: its registry, its hook, the config field that names the pick, its contract.

    ``config_field`` is ``section.field`` of ``EngineConfig`` (None: picked otherwise, a
    model by the checkpoint's architecture, a quantizer by its quantization config, a
    tool parser by ``folo serve --tool-call-parser``, a proposer by
    ``speculative_config["method"]``). ``per_engine`` kinds are resolved
    once when the engine starts; a structured-output backend is picked per request.
    """

    name: str
    hook: str
    contract: str
    config_field: str | None = None
    per_engine: bool = False

    def configured(self, config: Any) -> str:
        """The name the config asks for (``auto`` included)."""
        section, field_name = self.config_field.split(".")
        return getattr(getattr(config, section), field_name)


PLUGIN_KINDS: tuple[PluginKind, ...] = (
    PluginKind("attention_backend", "register_attention_backends", "folo_core.attention.backend.AttentionBackend",
               "model.attention_backend", per_engine=True),
    PluginKind("scheduler", "register_schedulers", "folo_core.sched.interface.Scheduler",
               "scheduler.scheduler", per_engine=True),
    PluginKind("kv_cache_manager", "register_kv_cache_managers", "folo_core.kv_cache.interface.KVCacheManager",
               "cache.kv_cache_manager", per_engine=True),
    PluginKind("sampler", "register_samplers", "folo_core.sample.interface.Sampler", "model.sampler",
               per_engine=True),
    PluginKind("quantizer", "register_quantizers", "folo_core.quantization.QuantizationConfig"),
    PluginKind("model", "register_models", "folo_core.models.ModelLoader"),
    PluginKind("structured_output_backend", "register_structured_output_backends",
               "folo_core.structured_output.backend.StructuredOutputBackend", "model.structured_outputs_backend"),
    PluginKind("tool_parser", "register_tool_parsers", "folo_core.tool_parsers.interface.ToolParser"),
    PluginKind("proposer", "register_proposers", "folo_core.spec_decode.proposer.Proposer"),
    PluginKind("executor", "register_executors", "folo_core.executor.abstract.Executor",
               "parallel.distributed_executor_backend", per_engine=True),
)
"""Every plugin kind, in one place: one registry is built per kind."""

HOOK_KINDS: dict[str, str] = {kind.name: kind.hook for kind in PLUGIN_KINDS}
"""Registry kind -> hook name."""

__all__ = ["hookimpl", "hookspec", "HOOK_KINDS", "PLUGIN_KINDS", "PluginKind", "Register"]
