"""Paged attention for CPU on ``scaled_dot_product_attention``.

Decode tokens are attended in buckets of requests with similar context lengths
(padding is memory traffic, and decode attention on CPU is bound by it): large
buckets through the compiled kernel of ``decode_kernel.py``, which reads the
cache once through the block table, small ones through SDPA over gathered
blocks, where a kernel call would cost more than it saves; prefill chunks (which may continue
after cached tokens) run one SDPA call each with a bottom-right causal mask. The
split is computed once per step by the metadata builder.
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
from folo_plugins.paged.decode_kernel import CompiledDecode


@dataclass
class DecodeBucket:
    """Decode requests of similar length, attended in one call."""

    token_idx: torch.Tensor  # [n] positions in the flat batch
    block_table: torch.Tensor  # [n, max_blocks] their block tables (contiguous)
    seq_lens: torch.Tensor  # [n]
    mask: torch.Tensor  # [n, 1, 1, max_blocks * block_size], True = attend
    compiled: bool  # through the compiled kernel (else SDPA over gathered blocks)


@dataclass
class PagedSDPAMetadata:
    common: CommonAttentionMetadata
    decode_buckets: list[DecodeBucket]
    # Prefill chunks: (row in the batch, first token, end token, kv_len) per request.
    prefills: list[tuple[int, int, int, int]]


_MIN_BUCKET = 8  # requests; below this, a call's fixed cost outweighs the padding it saves
_MAX_BUCKETS = 4


class PagedSDPAMetadataBuilder(AttentionMetadataBuilder):
    # Buckets with at least this many (padded) context tokens use the compiled kernel.
    compiled_decode_min_tokens = 4096

    def build(self, common: CommonAttentionMetadata) -> PagedSDPAMetadata:
        starts = common.query_start_loc_cpu
        seq_lens = common.seq_lens_cpu
        is_decode = (starts[1:] - starts[:-1]) == 1
        decode_rows = torch.nonzero(is_decode).flatten()
        decode_rows = decode_rows[seq_lens[decode_rows].argsort()]
        num_buckets = min(_MAX_BUCKETS, max(1, len(decode_rows) // _MIN_BUCKET))
        buckets = [self._bucket(common, rows) for rows in decode_rows.tensor_split(num_buckets) if len(rows)]
        prefills = [
            (i, int(starts[i]), int(starts[i + 1]), int(seq_lens[i]))
            for i in torch.nonzero(~is_decode).flatten().tolist()
        ]
        return PagedSDPAMetadata(common=common, decode_buckets=buckets, prefills=prefills)

    def _bucket(self, common: CommonAttentionMetadata, rows: torch.Tensor) -> DecodeBucket:
        lens = common.seq_lens_cpu[rows]
        num_blocks = cdiv(int(lens.max()), common.block_size)
        mask = (torch.arange(num_blocks * common.block_size)[None, :] < lens[:, None])[:, None, None, :]
        device_rows = rows.to(common.block_table.device)
        return DecodeBucket(
            token_idx=common.query_start_loc_cpu[rows].to(self.device, torch.long),
            block_table=common.block_table[device_rows, :num_blocks].to(torch.long).contiguous(),
            seq_lens=common.seq_lens[device_rows],
            mask=mask.to(self.device),
            compiled=not self.enforce_eager and mask.numel() >= self.compiled_decode_min_tokens,
        )


class PagedSDPAImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: PagedSDPAMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = PagedSDPABackend.split_kv_cache(kv_cache)
        write_to_kv_cache(key_cache, value_cache, key, value, md.common.slot_mapping)
        out = torch.empty_like(query)
        for bucket in md.decode_buckets:
            out[bucket.token_idx] = self._decode(query[bucket.token_idx], key_cache, value_cache, bucket)
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
                bucket: DecodeBucket) -> torch.Tensor:
        num = q.shape[0]
        # One query token per request: fold the GQA group into the query-length axis.
        q = q.view(num, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_size)
        o = None
        if bucket.compiled:
            o = CompiledDecode.run(q, key_cache, value_cache, bucket.block_table, bucket.seq_lens, self.scale)
        if o is None:
            shape = (num, bucket.mask.shape[-1], self.num_kv_heads, self.head_size)
            # index_select over whole blocks: our own copy, so stale slots past each request's
            # length (possibly NaN from another request) can be zeroed; masking alone lets NaN through.
            block_ids = bucket.block_table.view(-1)
            stale = ~bucket.mask.view(num, -1, 1, 1)
            k = key_cache.index_select(0, block_ids).view(shape).masked_fill_(stale, 0)
            v = value_cache.index_select(0, block_ids).view(shape).masked_fill_(stale, 0)
            # [num, L, KH, D] -> [num, KH, L, D] (a view)
            o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=bucket.mask,
                                               scale=self.scale)
        return o.reshape(num, self.num_heads, self.head_size)


class PagedSDPABackend(AttentionBackend):
    name = "paged"

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return PagedSDPAImpl

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return PagedSDPAMetadataBuilder
