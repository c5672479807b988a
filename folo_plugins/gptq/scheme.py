"""``GPTQScheme``: how one linear is quantized, and the one check of its values.

Its own module so that the config, the linear method, the kernels and ``folo
quantize`` all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from folo_plugins.gptq.packing import SUPPORTED_BITS


@dataclass(frozen=True)
class GPTQScheme:
    """How one linear layer is quantized (the config's values after any ``dynamic`` override)."""

    bits: int
    group_size: int  # -1: one group over the whole input
    desc_act: bool
    sym: bool
    checkpoint_format: str


def scheme_problem(bits: int, group_size: int) -> str | None:
    """What is wrong with these values (``bits=3 is not supported ...``), or None."""
    if bits not in SUPPORTED_BITS:
        return f"bits={bits} is not supported (supported: {', '.join(map(str, SUPPORTED_BITS))})"
    if group_size != -1 and group_size <= 0:
        return f"group_size={group_size} must be -1 (a single group) or positive"
    return None
