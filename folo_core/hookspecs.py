"""Pluggy hook specifications: the only way implementations enter Folo.

Every hook hands the plugin a ``register(name, impl, *, priority=0)`` callable.
Built-in plugins and third-party packages use the same hooks through the
``folo`` entry-point group, so nothing built in is privileged.
"""

from __future__ import annotations

from typing import Callable

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
def register_models(register: Register) -> None:
    """Register model loaders by HF architecture name (``config.json`` ``architectures``)."""


HOOK_KINDS: dict[str, str] = {
    "attention_backend": "register_attention_backends",
    "scheduler": "register_schedulers",
    "kv_cache_manager": "register_kv_cache_managers",
    "sampler": "register_samplers",
    "quantizer": "register_quantizers",
    "model": "register_models",
    "structured_output_backend": "register_structured_output_backends",
    "tool_parser": "register_tool_parsers",
}
"""Registry kind -> hook name. One registry is built per kind."""

__all__ = ["hookimpl", "hookspec", "HOOK_KINDS", "Register"]
