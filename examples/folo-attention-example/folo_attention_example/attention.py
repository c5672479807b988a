"""Chunked online-softmax attention over Folo's paged KV cache, in pure torch.

For each request it visits the cached keys one KV block at a time and keeps,
per query row, a running maximum, softmax denominator and weighted sum of
values (the flash-attention recurrence). No score matrix larger than
``[heads, q_len, block_size]`` ever exists, and GQA needs no copies of K/V:
query heads are grouped under the KV head they share.
"""

from __future__ import annotations

import torch

from folo_core.attention import AttentionBackend, AttentionImpl, CommonAttentionMetadata
from folo_core.attention.ops import write_to_kv_cache


class ChunkedOnlineSoftmaxImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: CommonAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = ChunkedOnlineSoftmaxBackend.split_kv_cache(kv_cache)
        write_to_kv_cache(key_cache, value_cache, key, value, md.slot_mapping)
        out = torch.empty_like(query)
        starts = md.query_start_loc_cpu.tolist()
        block_table = md.block_table.tolist()
        for i, seq_len in enumerate(md.seq_lens_cpu.tolist()):
            q = query[starts[i]:starts[i + 1]]
            out[starts[i]:starts[i + 1]] = self._attend(q, key_cache, value_cache, block_table[i], seq_len)
        return out

    def _attend(self, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                block_ids: list[int], seq_len: int) -> torch.Tensor:
        """One request: ``q`` [q_len, H, D] are the last q_len of its ``seq_len`` positions."""
        q_len, block_size = q.shape[0], key_cache.shape[1]
        group = self.num_heads // self.num_kv_heads
        # [KH, group, q_len, D]: query heads under the KV head they read.
        qg = q.float().view(q_len, self.num_kv_heads, group, self.head_size).permute(1, 2, 0, 3)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        running_max = torch.full(qg.shape[:3], float("-inf"), device=q.device)
        denominator = torch.zeros(qg.shape[:3], device=q.device)
        acc = torch.zeros_like(qg)
        # Key 0 is visible to every query, so the running max is finite after the first block.
        for first in range(0, seq_len, block_size):
            block = block_ids[first // block_size]
            n = min(block_size, seq_len - first)
            k = key_cache[block, :n].float()  # [n, KH, D]
            v = value_cache[block, :n].float()
            scores = torch.einsum("hgqd,nhd->hgqn", qg, k) * self.scale
            future = torch.arange(first, first + n, device=q.device)[None, :] > q_pos[:, None]
            scores = scores.masked_fill(future, float("-inf"))
            new_max = torch.maximum(running_max, scores.amax(dim=-1))
            probs = torch.exp(scores - new_max[..., None])
            correction = torch.exp(running_max - new_max)
            denominator = denominator * correction + probs.sum(dim=-1)
            acc = acc * correction[..., None] + torch.einsum("hgqn,nhd->hgqd", probs, v)
            running_max = new_max
        out = acc / denominator[..., None]
        return out.permute(2, 0, 1, 3).reshape(q_len, self.num_heads, self.head_size).to(q.dtype)


class ChunkedOnlineSoftmaxBackend(AttentionBackend):
    """Runs anywhere torch does; keeps the default KV layout (see AttentionBackend.get_kv_cache_shape)."""

    name = "chunked_online_softmax"

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return ChunkedOnlineSoftmaxImpl
