"""The reference attention backend: per request, explicit softmax in float32.

Slow and obviously correct: every other backend is checked against it.
"""

from __future__ import annotations

import torch

from folo_core.attention.backend import (
    AttentionBackend,
    AttentionCapabilities,
    AttentionImpl,
    CommonAttentionMetadata,
)
from folo_core.attention.ops import causal_attention, gather_kv, window_start, write_to_kv_cache
from folo_core.utils import cdiv


class NaiveAttentionImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: CommonAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = NaiveAttentionBackend.split_kv_cache(kv_cache)
        write_to_kv_cache(key_cache, value_cache, key, value, md.slot_mapping)
        out = torch.empty_like(query)
        starts = md.query_start_loc_cpu.tolist()
        for i, kv_len in enumerate(md.seq_lens_cpu.tolist()):
            q = query[starts[i]:starts[i + 1]].float()
            # Read only the window's blocks: those before it may belong to another request now.
            first = window_start(kv_len, len(q), self.sliding_window)
            first_block = first // md.block_size
            blocks = md.block_table[i, first_block:cdiv(kv_len, md.block_size)]
            offset = first_block * md.block_size
            k = gather_kv(key_cache, blocks, kv_len - offset).float()
            v = gather_kv(value_cache, blocks, kv_len - offset).float()
            out[starts[i]:starts[i + 1]] = causal_attention(q, k, v, self.scale, self.sliding_window, offset,
                                                            self.logits_soft_cap).to(query.dtype)
        return out


class NaiveAttentionBackend(AttentionBackend):
    name = "naive"
    capabilities = AttentionCapabilities(sliding_window=True, logits_soft_cap=True)

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return NaiveAttentionImpl
