"""Per-step state the model's layers read without it being threaded through forward().

The model runner builds the attention metadata once per step and sets it here;
every ``Attention`` layer reads it. This keeps model definitions free of
backend-specific arguments (vLLM's ``set_forward_context``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class ForwardContext:
    attn_metadata: Any
    # The running model's attention layers by prefix: a compiled graph reaches them by
    # name through the ``folo::unified_attention`` op (``folo_core.attention.layer``).
    attn_layers: dict[str, Any] = field(default_factory=dict)
    # Its linear layers whose packed weight is opaque (oneDNN's layout), by module name: a
    # compiled graph names them in ``folo::mkldnn_linear`` (``folo_core.kernels.cpu_linear``),
    # since a graph compiled ahead of time cannot take such a tensor as an input.
    linear_layers: dict[str, Any] = field(default_factory=dict)


_current: ForwardContext | None = None


@contextlib.contextmanager
def set_forward_context(attn_metadata: Any, attn_layers: dict[str, Any] | None = None,
                        linear_layers: dict[str, Any] | None = None) -> Iterator[None]:
    global _current
    previous, _current = _current, ForwardContext(attn_metadata, attn_layers or {}, linear_layers or {})
    try:
        yield
    finally:
        _current = previous


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("no forward context: the model must run inside ModelRunner.execute_model")
    return _current
