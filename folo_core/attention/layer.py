"""The model-side ``Attention`` layer: dispatches to the configured backend."""

from __future__ import annotations

import torch
from torch import nn

from folo_core.attention.backend import AttentionBackend
from folo_core.forward_context import get_forward_context


class Attention(nn.Module):
    """Takes projected q/k/v of the flat batch; the backend owns cache and math.

    The model runner binds ``kv_cache`` after allocating the cache; until then the
    layer cannot run.
    """

    def __init__(
        self,
        backend: type[AttentionBackend],
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.backend = backend
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.prefix = prefix
        self.impl = backend.get_impl_cls()(num_heads, head_size, scale, num_kv_heads)
        self.kv_cache: torch.Tensor | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` [T, H*D], ``key``/``value`` [T, KH*D] -> [T, H*D]."""
        if self.kv_cache is None:
            raise RuntimeError(f"attention layer {self.prefix!r} has no KV cache bound")
        num_tokens = query.shape[0]
        out = self.impl.forward(
            query.view(num_tokens, self.num_heads, self.head_size),
            key.view(num_tokens, self.num_kv_heads, self.head_size),
            value.view(num_tokens, self.num_kv_heads, self.head_size),
            self.kv_cache,
            get_forward_context().attn_metadata,
        )
        return out.reshape(num_tokens, self.num_heads * self.head_size)
