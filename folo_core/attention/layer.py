"""The model-side ``Attention`` layer: dispatches to the configured backend."""

from __future__ import annotations

import torch
from torch import nn

from folo_core.attention.backend import AttentionBackend
from folo_core.forward_context import get_forward_context
from folo_core.kernels.ops import define_op


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
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.prefix = prefix
        self.sliding_window = sliding_window
        self.impl = backend.get_impl_cls()(num_heads, head_size, scale, num_kv_heads, sliding_window=sliding_window,
                                           logits_soft_cap=logits_soft_cap)
        self.kv_cache: torch.Tensor | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` [T, H, D] or [T, H*D], ``key``/``value`` [T, KH, D] or [T, KH*D] -> [T, H*D].

        Inputs may be strided views (e.g. slices of a fused QKV output); backends
        must not assume they are contiguous. Under ``torch.compile`` the call goes
        through the opaque ``folo::unified_attention`` op, so the backend's Python
        (metadata, buckets, cache writes) never breaks or enters the graph.
        """
        if torch.compiler.is_compiling():
            return unified_attention(query, key, value, self.prefix)
        return self.forward_eager(query, key, value)

    def forward_eager(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.kv_cache is None:
            raise RuntimeError(f"attention layer {self.prefix!r} has no KV cache bound")
        out = self.impl.forward(
            self._by_head(query, self.num_heads),
            self._by_head(key, self.num_kv_heads),
            self._by_head(value, self.num_kv_heads),
            self.kv_cache,
            get_forward_context().attn_metadata,
        )
        return out.reshape(query.shape[0], self.num_heads * self.head_size)

    def _by_head(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        return x if x.dim() == 3 else x.view(x.shape[0], num_heads, self.head_size)


def _unified_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer_name: str) -> torch.Tensor:
    """The attention layer ``layer_name`` of the model running this step (vLLM's op of the same name).

    It writes the layer's KV cache, which is not an argument: the cache is the
    layer's state, and the op's output depends on it, so the graph cannot drop or
    reorder the call.
    """
    return get_forward_context().attn_layers[layer_name].forward_eager(query, key, value)


def _fake_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer_name: str) -> torch.Tensor:
    return query.new_empty(query.shape[0], query.shape[1:].numel())


unified_attention = define_op("unified_attention(Tensor query, Tensor key, Tensor value, str layer_name) -> Tensor",
                              _unified_attention, _fake_attention)
