"""Folo's graph-opaque operators (``torch.ops.folo.*``), defined on one ``torch.library``.

A compiled graph must not trace into some calls (attention, whose backend runs
Python per step; linears on oneDNN's opaque packed weights), so they enter it
as operators with a fake (shape-only) implementation. ``torch.library.custom_op``
wraps each call in an autograd layer that an inference engine never needs and
that costs about 15 us a call, more than a decode step's small matmuls take;
defining the op on a ``Library`` with a ``CompositeExplicitAutograd`` kernel
skips it.
"""

from __future__ import annotations

from typing import Callable

import torch

_LIBRARY = torch.library.Library("folo", "DEF")


def define_op(schema: str, impl: Callable, fake: Callable) -> torch._ops.OpOverloadPacket:
    """``torch.ops.folo.<name>`` from ``schema`` (e.g. ``"name(Tensor x) -> Tensor"``)."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"folo::{name}", fake, lib=_LIBRARY)
    return getattr(torch.ops.folo, name)
