"""RMSNorm with HF transformers' rounding for each family (where the weight is applied)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, dim: int, eps: float, offset: float,
             scale_in_float32: bool) -> torch.Tensor:
    """``(offset + weight) * x / rms(x)`` over the last ``dim`` features, rounded where HF rounds:
    after the scale in float32 (OLMo 2, Gemma's ``1 + w``) or before it (Llama, Qwen3)."""
    if scale_in_float32:
        return ((weight.float() + offset) * F.rms_norm(x.float(), (dim,), eps=eps)).to(x.dtype)
    return (weight + offset if offset else weight) * F.rms_norm(x, (dim,), eps=eps)


class RMSNorm(nn.Module):
    """``scale_in_float32``: multiply by the weight before rounding to ``x``'s dtype (OLMo 2's
    order) instead of after (Llama's); the two agree in float32. ``offset``: Gemma stores
    ``w - 1`` and scales by ``1 + w``."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale_in_float32: bool = False,
                 offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.variance_epsilon = eps
        self.scale_in_float32, self.offset = scale_in_float32, offset

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With ``residual``: returns (norm(x + residual), x + residual), the fused pre-norm step.

        ``F.rms_norm`` without a weight computes in float32 and rounds to ``x``'s
        dtype; the weight is applied after the rounding, exactly as HF does, so
        bf16 outputs match HF bit for bit. Three aten calls instead of nine.
        """
        if residual is not None:
            x = residual = x + residual
        out = rms_norm(x, self.weight, self.weight.shape[0], self.variance_epsilon, self.offset,
                       self.scale_in_float32)
        return out if residual is None else (out, residual)


class QKNorm(nn.Module):
    """Qwen3's per-head RMSNorm of queries and keys, applied to their fused [T, H + KH, D] view.

    The checkpoint's ``q_norm.weight`` and ``k_norm.weight`` ([D] each) load as shards
    "q" and "k" of one [H + KH, D] weight, so the forward is one norm and one multiply.
    """

    shard_names = ("q", "k")

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.weight = nn.Parameter(torch.ones(num_heads + num_kv_heads, head_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.variance_epsilon = eps
        self.offset = offset  # Gemma 3: 1 + w, scaled in float32

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        from folo_core.models import CheckpointError

        rows = param.data[:self.num_heads] if shard_id == "q" else param.data[self.num_heads:]
        if loaded.shape != rows.shape[1:]:
            raise CheckpointError(f"shape {tuple(loaded.shape)} does not fit the expected {tuple(rows.shape[1:])}")
        rows.copy_(loaded.expand_as(rows))

    def forward(self, qk: torch.Tensor) -> torch.Tensor:
        return rms_norm(qk, self.weight, self.weight.shape[1], self.variance_epsilon, self.offset,
                        scale_in_float32=bool(self.offset))

