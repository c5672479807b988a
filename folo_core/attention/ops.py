"""Pure-torch cache operations shared by the CPU backends."""

from __future__ import annotations

import torch


def write_to_kv_cache(
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens], slot = block_id * block_size + offset
) -> None:
    """Store each new token's key/value at its slot (vLLM's ``reshape_and_cache``)."""
    num_kv_heads, head_size = key.shape[1], key.shape[2]
    key_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, key.to(key_cache.dtype))
    value_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, value.to(value_cache.dtype))


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    block_ids: torch.Tensor,  # [n_blocks] int
    seq_len: int,
) -> torch.Tensor:
    """The first ``seq_len`` cached tokens of one request: [seq_len, kv_heads, head]."""
    return cache.index_select(0, block_ids).flatten(0, 1)[:seq_len]
