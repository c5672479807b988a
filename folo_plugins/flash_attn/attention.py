"""Attention through the flash-attn 2 kernels (upstream ``flash-attn`` on PyPI), CUDA only.

Each step the builder turns the common metadata into the kernels' arguments
once; each layer writes its new keys/values at their slots and then runs one
kernel over the paged cache: ``flash_attn_with_kvcache`` when every request
decodes one token, ``flash_attn_varlen_func`` with ``block_table`` otherwise
(prefill, chunked prefill and mixed batches). Both align the causal mask to the
bottom right, so new tokens continue after their cached context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from folo_core.attention.backend import (
    AttentionBackend,
    AttentionCapabilities,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from folo_core.attention.ops import write_to_kv_cache
from folo_core.registry import SelectionContext
from folo_plugins.flash_attn.kernels import get_flash_attn_ops, kernels_missing, kernels_take_softcap

# Upstream kernels reject paged KV blocks that are not a multiple of 256 tokens.
PAGED_BLOCK_SIZE_MULTIPLE = 256


@dataclass
class FlashAttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    block_table: torch.Tensor  # int32 [num_reqs, max_blocks]
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]: cu_seqlens_q
    seq_start_loc: torch.Tensor  # int32 [num_reqs + 1]: cu_seqlens_k, cumulative context lengths
    seq_lens: torch.Tensor  # int32 [num_reqs]: cache_seqlens for decode
    max_query_len: int
    max_seq_len: int


class FlashAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> FlashAttentionMetadata:
        seq_start_loc = torch.zeros(common.num_reqs + 1, dtype=torch.int32, device=common.seq_lens.device)
        torch.cumsum(common.seq_lens, dim=0, dtype=torch.int32, out=seq_start_loc[1:])
        return FlashAttentionMetadata(
            slot_mapping=common.slot_mapping,
            block_table=common.block_table,
            query_start_loc=common.query_start_loc,
            seq_start_loc=seq_start_loc,
            seq_lens=common.seq_lens,
            max_query_len=common.max_query_len,
            max_seq_len=common.max_seq_len,
        )


class FlashAttentionImpl(AttentionImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: FlashAttentionMetadata) -> torch.Tensor:
        md = attn_metadata
        key_cache, value_cache = FlashAttentionBackend.split_kv_cache(kv_cache)
        write_to_kv_cache(key_cache, value_cache, key, value, md.slot_mapping)
        ops = get_flash_attn_ops()
        # A window of W keys, the query's own included: W - 1 to its left (vLLM's convention).
        window = (-1, -1) if self.sliding_window is None else (self.sliding_window - 1, 0)
        softcap = self.logits_soft_cap or 0.0  # flash-attn's "no cap"
        if md.max_query_len == 1:
            out = ops.flash_attn_with_kvcache(
                query.unsqueeze(1), key_cache, value_cache, cache_seqlens=md.seq_lens,
                block_table=md.block_table, softmax_scale=self.scale, causal=True, window_size=window,
                softcap=softcap)
            return out.squeeze(1)
        return ops.flash_attn_varlen_func(
            query, key_cache, value_cache, cu_seqlens_q=md.query_start_loc, cu_seqlens_k=md.seq_start_loc,
            max_seqlen_q=md.max_query_len, max_seqlen_k=md.max_seq_len, softmax_scale=self.scale,
            causal=True, block_table=md.block_table, window_size=window, softcap=softcap)


class FlashAttentionBackend(AttentionBackend):
    """Keeps the default KV layout: its key/value halves are the kernels' paged ``k_cache``/``v_cache``."""

    name = "flash_attn"
    capabilities = AttentionCapabilities(
        devices=("cuda",),
        dtypes=(torch.float16, torch.bfloat16),
        head_sizes=tuple(range(8, 257, 8)),
        block_size_multiple=PAGED_BLOCK_SIZE_MULTIPLE,
        sliding_window=True,
        logits_soft_cap=True,  # ``softcap``, flash-attn 2.6+ (``check_eligibility`` refuses older builds)
    )

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        return FlashAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return FlashAttentionMetadataBuilder

    @classmethod
    def missing_requirements(cls) -> list[str]:
        missing = []
        if not torch.cuda.is_available():
            missing.append("no CUDA device (torch.cuda.is_available() is False)")
        elif (cc := torch.cuda.get_device_capability()) < (8, 0):
            missing.append(f"needs a CUDA device of compute capability 8.0+ (found {cc[0]}.{cc[1]})")
        kernels = kernels_missing()
        if kernels is not None:
            missing.append(kernels)
        return missing

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        reasons = super().check_eligibility(ctx)
        if not reasons and ctx.options.get("logits_soft_cap") and not kernels_take_softcap():
            reasons.append("the installed flash_attn has no softcap argument, which the model's "
                           "attn_logit_softcapping needs (flash-attn 2.6+)")
        return reasons
