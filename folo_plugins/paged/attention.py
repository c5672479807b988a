"""Paged attention for CPU: a C++ decode kernel, ``scaled_dot_product_attention`` for prefill.

Decode tokens go to ``folo_cpu::paged_decode_attention`` (``csrc/paged_attention.cpp``,
built for this CPU on first use), which reads each request's keys and values
once, through the block table, with no gathered copy and no padding: one call
per layer for every decoding request. Short query chunks (a request verifying
draft tokens) go there too, one kernel row per token over the context up to it. Where it
cannot be built (no C++ compiler), decodes are attended by SDPA in buckets of
requests with similar context lengths over their gathered slots (padding is
memory traffic, and decode attention on CPU is bound by it). Prefill chunks
(which may continue after cached tokens) run one SDPA call each with a
bottom-right causal mask. The split is computed once per step by the metadata
builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from folo_core.attention.backend import (
    AttentionBackend,
    AttentionCapabilities,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from folo_core.attention.ops import causal_attention, gather_kv, visible_keys, window_start, write_to_kv_cache
from folo_core.kernels.cpp_build import load_cpp_ops
from folo_core.utils import cdiv

_KERNEL_SOURCE = Path(__file__).parent / "csrc" / "paged_attention.cpp"


def cpu_decode_kernel_available() -> bool:
    """Whether ``folo_cpu::paged_decode_attention`` is built and loaded (built on first call)."""
    return load_cpp_ops(_KERNEL_SOURCE)


def write_kv(key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """``write_to_kv_cache`` by the C++ row copy where it is built: ``index_copy_`` took about
    85 us a call for a 128-token decode step's keys, two calls a layer."""
    if key.device.type != "cpu" or not cpu_decode_kernel_available():
        write_to_kv_cache(key_cache, value_cache, key, value, slot_mapping)
        return
    torch.ops.folo_cpu.reshape_and_cache(key.to(key_cache.dtype), value.to(value_cache.dtype), key_cache,
                                         value_cache, slot_mapping)


@dataclass
class DecodeBucket:
    """Decode tokens attended in one call: every one of the step through the C++ kernel, or,
    for the SDPA fallback, those of requests of similar length."""

    token_idx: torch.Tensor | None  # [n] positions in the flat batch; None: every token, in order
    block_table: torch.Tensor  # int32 [n, max_blocks] their block tables (contiguous), for the kernel
    seq_lens: torch.Tensor  # int32 [n]
    kernel: bool  # through the C++ kernel; else SDPA over the gathered slots below
    # For SDPA: the cache slot of each request's context token, [n * L], padded past a request's
    # length with its own first slot (written, so finite), and the mask that hides the padding.
    slots: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [n, 1, 1, L], True = attend; None: one request, no padding


@dataclass
class PagedSDPAMetadata:
    common: CommonAttentionMetadata
    decode_buckets: list[DecodeBucket]
    # Prefill chunks: (row in the batch, first token, end token, kv_len) per request.
    prefills: list[tuple[int, int, int, int]]


# Requests with at most this many query tokens (a decode, or one verifying draft tokens) go
# to the C++ kernel one token at a time, each over the context up to its own position; longer
# chunks are prefill, where one SDPA call's matmuls beat per-token dot products.
_KERNEL_MAX_QUERY = 16
# The SDPA fallback's buckets.
_MIN_BUCKET = 8  # requests; below this, a call's fixed cost outweighs the padding it saves
_MAX_BUCKETS = 4
# What one more attention call costs per layer, in padded context tokens (about 100 us of
# call overhead against about 0.1 us a token on a 2-core AVX512 EPYC): a split must save more.
_CALL_COST_TOKENS = 1024


def num_decode_buckets(sorted_lens: torch.Tensor) -> int:
    """How many equal-count buckets of the sorted decode lengths minimise padded tokens plus
    per-call cost: one bucket when lengths are alike, up to ``_MAX_BUCKETS`` when they spread."""
    best, best_cost = 1, None
    for k in range(1, min(_MAX_BUCKETS, len(sorted_lens) // _MIN_BUCKET) + 1):
        cost = k * _CALL_COST_TOKENS + sum(len(b) * int(b[-1]) for b in sorted_lens.tensor_split(k))
        if best_cost is None or cost < best_cost:
            best, best_cost = k, cost
    return best


class PagedSDPAMetadataBuilder(AttentionMetadataBuilder):
    use_cpu_kernel = True  # False: SDPA buckets even where the C++ kernel builds (tests, comparisons)

    def build(self, common: CommonAttentionMetadata) -> PagedSDPAMetadata:
        starts = common.query_start_loc_cpu
        seq_lens = common.seq_lens_cpu
        kernel = self.use_cpu_kernel and self.device.type == "cpu" and cpu_decode_kernel_available()
        q_lens = starts[1:] - starts[:-1]
        is_decode = q_lens <= _KERNEL_MAX_QUERY if kernel else q_lens == 1
        decode_rows = torch.nonzero(is_decode).flatten()
        num_buckets = 1
        if not kernel and len(decode_rows) >= 2 * _MIN_BUCKET:
            lens, order = seq_lens[decode_rows].sort()
            num_buckets = num_decode_buckets(lens)
            if num_buckets > 1:
                decode_rows = decode_rows[order]
        all_in_order = num_buckets == 1 and len(decode_rows) == common.num_reqs
        if kernel:
            buckets = [self._kernel_bucket(common, decode_rows, q_lens, all_in_order)] if len(decode_rows) else []
        else:
            buckets = [self._bucket(common, rows, all_in_order)
                       for rows in decode_rows.tensor_split(num_buckets) if len(rows)]
        prefills = [
            (i, int(starts[i]), int(starts[i + 1]), int(seq_lens[i]))
            for i in torch.nonzero(~is_decode).flatten().tolist()
        ]
        return PagedSDPAMetadata(common=common, decode_buckets=buckets, prefills=prefills)

    def _kernel_bucket(self, common: CommonAttentionMetadata, rows: torch.Tensor, q_lens: torch.Tensor,
                       all_in_order: bool) -> DecodeBucket:
        """Every query token of ``rows`` as one kernel row: its request's block table, and the
        context up to and including its own position (causal within a short query chunk)."""
        row_q = q_lens[rows]
        token_rows = rows.repeat_interleave(row_q)
        offsets = torch.arange(len(token_rows)) - (row_q.cumsum(0) - row_q).repeat_interleave(row_q)
        seq_lens = common.seq_lens_cpu[token_rows] - (q_lens[token_rows] - 1 - offsets)
        blocks = cdiv(int(common.seq_lens_cpu[rows].max()), common.block_size)
        device_rows = token_rows.to(common.block_table.device)
        token_idx = common.query_start_loc_cpu[token_rows] + offsets
        return DecodeBucket(
            token_idx=None if all_in_order else token_idx.to(self.device, torch.long),
            block_table=common.block_table[device_rows, :blocks].contiguous(),
            seq_lens=seq_lens.to(self.device, torch.int32), kernel=True)

    def _bucket(self, common: CommonAttentionMetadata, rows: torch.Tensor, all_in_order: bool) -> DecodeBucket:
        """``all_in_order``: the bucket is the whole step, so its tokens need no gather or scatter."""
        lens = common.seq_lens_cpu[rows]
        max_len = int(lens.max())
        block_size = common.block_size
        device_rows = rows.to(common.block_table.device)
        bucket = DecodeBucket(
            token_idx=None if all_in_order else common.query_start_loc_cpu[rows].to(self.device, torch.long),
            block_table=common.block_table[device_rows, :cdiv(max_len, block_size)].contiguous(),
            seq_lens=common.seq_lens[device_rows], kernel=False)
        block_table = bucket.block_table.to(torch.long)
        positions = torch.arange(max_len, device=block_table.device)
        slots = block_table[:, positions // block_size] * block_size + positions % block_size  # [n, L]
        if len(rows) > 1:
            valid = positions[None, :] < lens.to(block_table.device)[:, None]
            slots = torch.where(valid, slots, slots[:, :1])
            bucket.mask = valid[:, None, None, :].to(self.device)
        bucket.slots = slots.view(-1).to(self.device)
        return bucket


class PagedSDPAImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: PagedSDPAMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = PagedSDPABackend.split_kv_cache(kv_cache)
        write_kv(key_cache, value_cache, key, value, md.common.slot_mapping)
        buckets = md.decode_buckets
        # The SDPA fallback's gathered slots start at position 0 and SDPA has no score hook: a
        # windowed or soft-capped layer attends those tokens one by one instead.
        per_token = self.sliding_window is not None or self.logits_soft_cap is not None
        if len(buckets) == 1 and buckets[0].token_idx is None and (buckets[0].kernel or not per_token):
            return self._decode(query, kv_cache, key_cache, value_cache, buckets[0])  # a pure decode step
        out = query.new_empty(query.shape)
        for bucket in buckets:
            if per_token and not bucket.kernel:
                self._decode_per_token(query, key_cache, value_cache, bucket, md.common.block_size, out)
            else:
                out[bucket.token_idx] = self._decode(query[bucket.token_idx], kv_cache, key_cache, value_cache,
                                                     bucket)
        for row, start, end, kv_len in md.prefills:
            out[start:end] = self._attend(query[start:end], key_cache, value_cache,
                                          md.common.block_table[row], kv_len, md.common.block_size)
        return out

    def _attend(self, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                block_row: torch.Tensor, kv_len: int, block_size: int) -> torch.Tensor:
        """One request's query chunk, the last ``len(q)`` of its ``kv_len`` positions, by SDPA over
        its gathered context: from the window's first block on, so nothing before it is read.
        A soft-capped layer takes the reference math in float32 instead (SDPA cannot cap scores)."""
        q_len = q.shape[0]
        first_block = window_start(kv_len, q_len, self.sliding_window) // block_size
        blocks = block_row[first_block:cdiv(kv_len, block_size)]
        offset = first_block * block_size
        k = gather_kv(key_cache, blocks, kv_len - offset)  # [kv, KH, D]
        v = gather_kv(value_cache, blocks, kv_len - offset)
        if self.logits_soft_cap is not None:
            return causal_attention(q.float(), k.float(), v.float(), self.scale, self.sliding_window, offset,
                                    self.logits_soft_cap).to(q.dtype)
        k, v = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)  # [1, KH, kv, D]
        if self.sliding_window is not None:
            mask = visible_keys(q_len, kv_len - offset, self.sliding_window, offset, q.device)
        else:
            mask = None if q_len == kv_len else causal_lower_right(q_len, kv_len)
        o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k, v, attn_mask=mask,
                                           is_causal=mask is None, scale=self.scale, enable_gqa=True)
        return o[0].transpose(0, 1)

    def _decode_per_token(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          bucket: DecodeBucket, block_size: int, out: torch.Tensor) -> None:
        """The SDPA fallback's bucket for a windowed or soft-capped layer, token by token."""
        idx = range(len(bucket.seq_lens)) if bucket.token_idx is None else bucket.token_idx.tolist()
        for j, (t, kv_len) in enumerate(zip(idx, bucket.seq_lens.tolist())):
            out[t:t + 1] = self._attend(query[t:t + 1], key_cache, value_cache, bucket.block_table[j],
                                        kv_len, block_size)

    def _decode(self, q: torch.Tensor, kv_cache: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                bucket: DecodeBucket) -> torch.Tensor:
        """``key_cache``/``value_cache``: ``kv_cache`` split once by the caller (an unbind is about
        10 us, once per layer and step)."""
        if bucket.kernel:
            out = torch.ops.folo_cpu.paged_decode_attention(q.to(key_cache.dtype), key_cache, value_cache,
                                                            bucket.block_table, bucket.seq_lens, self.scale,
                                                            self.sliding_window or 0, self.logits_soft_cap or 0.0)
            return out.to(q.dtype)
        num = q.shape[0]
        # One query token per request: fold the GQA group into the query-length axis.
        q = q.reshape(num, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_size)
        # Keys and values of exactly the slots needed, in one index_select over the default
        # [2, slots, ...] view of the layout; no stale slot (possibly NaN) is ever read.
        kv = kv_cache.view(2, -1, self.num_kv_heads, self.head_size).index_select(1, bucket.slots)
        k, v = kv.view(2, num, -1, self.num_kv_heads, self.head_size).transpose(2, 3).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bucket.mask, scale=self.scale)
        return o.view(num, self.num_heads, self.head_size)


class PagedSDPABackend(AttentionBackend):
    name = "paged"
    capabilities = AttentionCapabilities(sliding_window=True, logits_soft_cap=True)

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return PagedSDPAImpl

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return PagedSDPAMetadataBuilder
