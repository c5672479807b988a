"""RMSNorm with HF transformers' rounding: normalize in float32, round, then scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``scale_in_float32``: multiply by the weight before rounding to ``x``'s dtype (OLMo 2's
    order) instead of after (Llama's); the two agree in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale_in_float32: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.variance_epsilon = eps
        self.scale_in_float32 = scale_in_float32

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With ``residual``: returns (norm(x + residual), x + residual), the fused pre-norm step.

        ``F.rms_norm`` without a weight computes in float32 and rounds to ``x``'s
        dtype; the weight is applied after the rounding, exactly as HF does, so
        bf16 outputs match HF bit for bit. Three aten calls instead of nine.
        """
        if residual is not None:
            x = residual = x + residual
        if self.scale_in_float32:
            out = (self.weight.float() * F.rms_norm(x.float(), self.weight.shape, eps=self.variance_epsilon)).to(x.dtype)
        else:
            out = self.weight * F.rms_norm(x, self.weight.shape, eps=self.variance_epsilon)
        return out if residual is None else (out, residual)


class QKNorm(nn.Module):
    """Qwen3's per-head RMSNorm of queries and keys, applied to their fused [T, H + KH, D] view.

    The checkpoint's ``q_norm.weight`` and ``k_norm.weight`` ([D] each) load as shards
    "q" and "k" of one [H + KH, D] weight, so the forward is one norm and one multiply.
    """

    shard_names = ("q", "k")

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.weight = nn.Parameter(torch.ones(num_heads + num_kv_heads, head_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.variance_epsilon = eps

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        from folo_core.models import CheckpointError

        rows = param.data[:self.num_heads] if shard_id == "q" else param.data[self.num_heads:]
        if loaded.shape != rows.shape[1:]:
            raise CheckpointError(f"shape {tuple(loaded.shape)} does not fit the expected {tuple(rows.shape[1:])}")
        rows.copy_(loaded.expand_as(rows))

    def forward(self, qk: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(qk, self.weight.shape[1:], eps=self.variance_epsilon)

