"""Pure-torch cache and attention operations shared by the CPU backends and the conformance kit."""

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
    if key.dtype != key_cache.dtype:
        key, value = key.to(key_cache.dtype), value.to(value_cache.dtype)
    key_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, value)


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    block_ids: torch.Tensor,  # [n_blocks] int
    seq_len: int,
) -> torch.Tensor:
    """The first ``seq_len`` cached tokens of one request: [seq_len, kv_heads, head]."""
    return cache.index_select(0, block_ids).flatten(0, 1)[:seq_len]


def window_start(seq_len: int, q_len: int, sliding_window: int | None) -> int:
    """First cache position any of the last ``q_len`` queries of a ``seq_len`` sequence sees."""
    return 0 if sliding_window is None else max(0, seq_len - q_len - sliding_window + 1)


def visible_keys(q_len: int, kv_len: int, sliding_window: int | None = None, kv_offset: int = 0,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """[q_len, kv_len] bool, True where a query sees a key: the last ``q_len`` of positions
    ``kv_offset .. kv_offset + kv_len - 1`` query, causal and within ``sliding_window``."""
    k_pos = torch.arange(kv_offset, kv_offset + kv_len, device=device)[None, :]
    q_pos = k_pos[:, kv_len - q_len:].T
    visible = k_pos <= q_pos
    if sliding_window is not None:
        visible &= k_pos > q_pos - sliding_window
    return visible


def causal_attention(
    query: torch.Tensor,  # [q_len, num_heads, head_size]: the last q_len positions of the sequence
    key: torch.Tensor,  # [kv_len, num_kv_heads, head_size]: positions kv_offset .. kv_offset + kv_len - 1
    value: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    kv_offset: int = 0,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:  # [q_len, num_heads, head_size]
    """Explicit-softmax attention of one sequence, the reference math every backend must match.

    Query ``j`` sits at position ``kv_offset + kv_len - q_len + j`` and sees the keys up to its
    own position (causal mask aligned to the bottom right), and with ``sliding_window`` W only
    the last W of them. ``key``/``value`` may start at ``kv_offset`` (a window's first position)
    instead of 0. With ``logits_soft_cap`` C the scaled scores become ``C * tanh(s / C)``.
    Computes in the inputs' dtype, so callers choose the precision.
    """
    q_len, kv_len = query.shape[0], key.shape[0]
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)
    value = value.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query, key) * scale
    if logits_soft_cap is not None:
        scores = torch.tanh(scores / logits_soft_cap) * logits_soft_cap
    visible = visible_keys(q_len, kv_len, sliding_window, kv_offset, query.device)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, value)
