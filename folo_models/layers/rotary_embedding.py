"""Rotary position embedding with HF's frequency tables (every ``rope_type`` it knows
that does not depend on the sequence length)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from folo_core.models import CheckpointError


def _inv_freq(hf_config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError("partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        base = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (base ** exponents), 1.0
    if rope_type == "dynamic":
        raise CheckpointError("rope_type 'dynamic' (length-dependent) is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise CheckpointError(f"unknown rope_type {rope_type!r}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """Neox-style rotation (``rotate_half``) with cos/sin tables indexed by position.

    The sin table is stored with its first half negated, so that
    ``rotate_half(x) * sin`` becomes ``swap_halves(x) * sin_signed``: one copy
    (``flip``) instead of chunk, neg and cat, with the same rounding as HF.
    """

    def __init__(self, hf_config: Any, head_dim: int, max_position: int) -> None:
        super().__init__()
        inv_freq, scaling = _inv_freq(hf_config, head_dim)
        freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.register_buffer("cos", torch.cat((freqs, freqs), dim=-1).cos() * scaling, persistent=False)
        sin = freqs.sin() * scaling
        self.register_buffer("sin_signed", torch.cat((-sin, sin), dim=-1), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's tables, looked up once and shared by every layer: [T, 1, D] each."""
        return self.cos[positions].to(dtype).unsqueeze(1), self.sin_signed[positions].to(dtype).unsqueeze(1)

    @staticmethod
    def apply(cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [T, heads, D] (queries and keys together) by their positions' angles."""
        cos, sin_signed = cos_sin
        swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
        return (x * cos).add_(swapped.mul_(sin_signed))
