"""RMSNorm with HF transformers' rounding: normalize in float32, round, then scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With ``residual``: returns (norm(x + residual), x + residual), the fused pre-norm step.

        ``F.rms_norm`` without a weight computes in float32 and rounds to ``x``'s
        dtype; the weight is applied after the rounding, exactly as HF does, so
        bf16 outputs match HF bit for bit. Three aten calls instead of nine.
        """
        if residual is not None:
            x = residual = x + residual
        out = self.weight * F.rms_norm(x, self.weight.shape, eps=self.variance_epsilon)
        return out if residual is None else (out, residual)
