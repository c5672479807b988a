"""Paged attention for CPU on ``scaled_dot_product_attention``.

Decode tokens of all requests go through one batched SDPA call over their padded
block tables; prefill chunks (which may continue after cached tokens) run one
SDPA call each with a bottom-right causal mask. The split is computed once per
step by the metadata builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from folo_core.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from folo_core.attention.ops import gather_kv, write_to_kv_cache
from folo_core.utils import cdiv


@dataclass
class PagedSDPAMetadata:
    common: CommonAttentionMetadata
    # Decode requests (one new token each), batched.
    decode_token_idx: torch.Tensor  # [num_decodes] positions in the flat batch
    decode_block_table: torch.Tensor  # [num_decodes, max_blocks]
    decode_mask: torch.Tensor  # [num_decodes, 1, 1, max_blocks * block_size], True = attend
    # Prefill chunks: (row in the batch, first token, end token, kv_len) per request.
    prefills: list[tuple[int, int, int, int]]


class PagedSDPAMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> PagedSDPAMetadata:
        starts = common.query_start_loc_cpu
        q_lens = (starts[1:] - starts[:-1])
        seq_lens = common.seq_lens_cpu
        is_decode = q_lens == 1
        decode_rows = torch.nonzero(is_decode).flatten()
        decode_seq = seq_lens[decode_rows]
        max_blocks = cdiv(int(decode_seq.max()), common.block_size) if len(decode_rows) else 0
        positions = torch.arange(max_blocks * common.block_size)
        decode_mask = (positions[None, :] < decode_seq[:, None])[:, None, None, :]
        prefills = [
            (i, int(starts[i]), int(starts[i + 1]), int(seq_lens[i]))
            for i in torch.nonzero(~is_decode).flatten().tolist()
        ]
        return PagedSDPAMetadata(
            common=common,
            decode_token_idx=starts[:-1][decode_rows].to(self.device, torch.long),
            decode_block_table=common.block_table[decode_rows.to(common.block_table.device), :max_blocks],
            decode_mask=decode_mask.to(self.device),
            prefills=prefills,
        )


class PagedSDPAImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: PagedSDPAMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = PagedSDPABackend.split_kv_cache(kv_cache)
        write_to_kv_cache(key_cache, value_cache, key, value, md.common.slot_mapping)
        out = torch.empty_like(query)
        if md.decode_token_idx.numel():
            out[md.decode_token_idx] = self._decode(query[md.decode_token_idx], key_cache, value_cache, md)
        block_size = md.common.block_size
        for row, start, end, kv_len in md.prefills:
            blocks = md.common.block_table[row, :cdiv(kv_len, block_size)]
            k = gather_kv(key_cache, blocks, kv_len).transpose(0, 1).unsqueeze(0)  # [1, KH, kv, D]
            v = gather_kv(value_cache, blocks, kv_len).transpose(0, 1).unsqueeze(0)
            q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, H, q_len, D]
            q_len = end - start
            mask = None if q_len == kv_len else causal_lower_right(q_len, kv_len)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               scale=self.scale, enable_gqa=True)
            out[start:end] = o[0].transpose(0, 1)
        return out

    def _decode(self, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                md: PagedSDPAMetadata) -> torch.Tensor:
        num = q.shape[0]
        group = self.num_heads // self.num_kv_heads
        # [num, max_blocks, block, KH, D] -> [num, KH, L, D]
        k = key_cache[md.decode_block_table].flatten(1, 2).transpose(1, 2)
        v = value_cache[md.decode_block_table].flatten(1, 2).transpose(1, 2)
        # One query token per request: fold the GQA group into the query-length axis.
        q = q.view(num, self.num_kv_heads, group, self.head_size)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=md.decode_mask, scale=self.scale)
        return o.reshape(num, self.num_heads, self.head_size)


class PagedSDPABackend(AttentionBackend):
    name = "paged"

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return PagedSDPAImpl

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return PagedSDPAMetadataBuilder
