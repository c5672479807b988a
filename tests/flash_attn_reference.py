"""Test-only pure-torch reference of the two flash-attn 2.8.x kernels Folo calls.

Emulates, on any device, the paged forms of upstream PyPI ``flash-attn``'s

* ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
  max_seqlen_k, ..., causal, block_table)``
* ``flash_attn_with_kvcache(q, k_cache, v_cache, ..., cache_seqlens, block_table,
  softmax_scale, causal, window_size, softcap)``

with the same signatures, and the argument checks of ``csrc/flash_attn/flash_api.cpp``
that can run without a GPU, so the flash backend's own code (metadata, layout,
call arguments) is exercised on CPU. Derived from a colleague's study of the
2.8.3 sources; cut down to the paged forms the backend uses (anything else raises
``NotImplementedError``).

Semantics:

* GQA: query head ``h`` uses KV head ``h // (nheads // nheads_k)``.
* ``softcap`` C > 0 turns each scaled score ``s`` into ``C * tanh(s / C)`` before the
  softmax (upstream folds the scale into the tanh's argument: the same function).
* ``causal=True`` aligns the mask to the bottom right of each sequence's
  (seqlen_q x seqlen_k) scores: query ``i`` sees key ``j`` iff
  ``j <= i + seqlen_k - seqlen_q``. Rows with no visible key are zero.
* Paged KV: ``k``/``v`` are ``[num_blocks, page_block_size, nheads_k, d]``;
  position ``p`` of sequence ``b`` is at ``k[block_table[b, p // page_block_size],
  p % page_block_size]``. Upstream needs ``page_block_size % 256 == 0``.
* varlen: sequence ``b`` has ``cu_seqlens_k[b+1] - cu_seqlens_k[b]`` keys (the
  cumulative context lengths, not an index into ``k``).
* with_kvcache: ``cache_seqlens`` (int32, one per sequence) counts the valid
  cached tokens; an int is broadcast to ``k_cache.shape[0]`` (the block count)
  upstream, so with a paged cache it fails the shape check.

Deliberate differences: runs on CPU; accepts float32 unless ``ALLOW_FLOAT32`` is
False (upstream: fp16/bf16 only); computes in float32.
"""

from __future__ import annotations

import math

import torch

#: Upstream flash-attn 2.x: 256 (vLLM's fork: 16).
PAGED_KV_BLOCK_SIZE_MULTIPLE = 256
#: Upstream rejects float32; the reference accepts it unless this is False.
ALLOW_FLOAT32 = True
_MAX_HEAD_DIM = 256


def _check(cond: bool, msg: str) -> None:
    """Mirror of TORCH_CHECK (a RuntimeError in Python)."""
    if not cond:
        raise RuntimeError(msg)


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor | None,
                  batch_size: int, head_size: int) -> None:
    allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if ALLOW_FLOAT32 else ())
    _check(q.dtype in allowed, "FlashAttention only support fp16 and bf16 data type")
    _check(k_cache.dtype == q.dtype and v_cache.dtype == q.dtype, "query and key/value must have the same dtype")
    if block_table is None:
        raise NotImplementedError("reference: only the paged (block_table) forms are implemented")
    _check(block_table.dtype == torch.int32, "block_table must have dtype torch.int32")
    _check(block_table.dim() == 2 and block_table.shape[0] == batch_size,
           "block_table must have shape (batch_size, max_num_blocks_per_seq)")
    _check(block_table.stride(-1) == 1, "block_table must have contiguous last dimension")
    _check(k_cache.dim() == 4, "k_cache must have shape (num_blocks, page_block_size, num_heads_k, head_size)")
    num_blocks, page_block_size, num_heads_k = k_cache.shape[:3]
    _check(page_block_size % PAGED_KV_BLOCK_SIZE_MULTIPLE == 0,
           f"Paged KV cache block size must be divisible by {PAGED_KV_BLOCK_SIZE_MULTIPLE}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check(tuple(t.shape) == (num_blocks, page_block_size, num_heads_k, head_size),
               f"{name} must have shape (num_blocks, page_block_size, num_heads_k, head_size)")
        _check(t.stride(-1) == 1, f"{name} must have contiguous last dimension")
    _check(batch_size > 0, "batch size must be positive")
    _check(-(-head_size // 8) * 8 <= _MAX_HEAD_DIM, "FlashAttention forward only supports head dimension at most 256")
    _check(q.shape[-2] % num_heads_k == 0, "Number of heads in key/value must divide number of heads in query")


def _check_no_extras(dropout_p: float, alibi_slopes) -> None:
    if dropout_p or alibi_slopes is not None:
        raise NotImplementedError("reference: dropout and ALiBi are not implemented")


def _gather_paged(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of one sequence: [length, nheads_k, d]."""
    block_size = cache.shape[1]
    n = -(-length // block_size)
    if n > block_row.numel():
        raise ValueError(f"reference: sequence needs {n} blocks, its block_table row has {block_row.numel()}")
    ids = block_row[:n].long()
    if bool((ids < 0).any()) or bool((ids >= cache.shape[0]).any()):
        raise ValueError("reference: block_table entry out of range [0, num_blocks)")
    return cache.index_select(0, ids).flatten(0, 1)[:length]


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                window_size: tuple[int, int], softcap: float) -> torch.Tensor:
    """Exact attention of one sequence in float32: q [Lq, H, d], k/v [Lk, Hk, d] -> [Lq, H, d].

    Query ``i`` sits at key position ``i + Lk - Lq`` (bottom-right alignment); ``window_size``
    (left, right) keeps the keys from ``left`` before it to ``right`` after it (-1: unbounded),
    ``causal`` sets right to 0, as upstream does. Like upstream, keys left of every query's
    window are never read (their blocks may hold another sequence's data, or NaN)."""
    left, right = window_size
    if left >= 0:  # drop the keys no query sees, and shift positions to match
        first = max(0, k.shape[0] - q.shape[0] - left)
        k, v = k[first:], v[first:]
    lq, lk = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(group, dim=1), v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    if causal:
        right = 0
    q_pos = torch.arange(lq, device=q.device)[:, None] + lk - lq
    k_pos = torch.arange(lk, device=q.device)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if left >= 0:
        allowed &= k_pos >= q_pos - left
    if right >= 0:
        allowed &= k_pos <= q_pos + right
    scores = scores.masked_fill(~allowed, -math.inf)
    probs = scores.softmax(dim=-1).nan_to_num(0.0)  # fully masked rows -> zero output
    return torch.einsum("hqk,khd->qhd", probs, v)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Paged ``flash_attn_varlen_func``: q [total_q, nheads, d] -> out [total_q, nheads, d] in q.dtype."""
    _check_no_extras(dropout_p, alibi_slopes)
    if return_attn_probs:
        raise NotImplementedError("reference: return_attn_probs is not implemented")
    _check(q.dim() == 3, "q must have shape (total_q, num_heads, head_size)")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        _check(cu.dtype == torch.int32, f"{name} must have dtype int32")
        _check(cu.is_contiguous(), f"{name} must be contiguous")
    batch_size = cu_seqlens_q.numel() - 1
    total_q, num_heads, head_size = q.shape
    _check_inputs(q, k, v, block_table, batch_size, head_size)
    _check(cu_seqlens_k.numel() == batch_size + 1, "cu_seqlens_k must have shape (batch_size + 1)")
    # Upstream's GQA decode path reshapes q to (batch, nheads_k, ngroups, d).
    if max_seqlen_q == 1 and num_heads > k.shape[2]:
        _check(total_q == batch_size, "max_seqlen_q == 1 with GQA requires exactly one query token per sequence")

    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    if cq[0] != 0 or ck[0] != 0 or any(b < a for a, b in zip(cq, cq[1:])) or any(b < a for a, b in zip(ck, ck[1:])):
        raise ValueError("reference: cu_seqlens_* must start at 0 and be non-decreasing")
    if cq[-1] != total_q:
        raise ValueError(f"reference: cu_seqlens_q[-1] = {cq[-1]} but q has {total_q} tokens")
    if max(b - a for a, b in zip(cq, cq[1:])) > max_seqlen_q or max(b - a for a, b in zip(ck, ck[1:])) > max_seqlen_k:
        raise ValueError("reference: a sequence is longer than max_seqlen_q / max_seqlen_k")

    scale = head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    out = torch.zeros(total_q, num_heads, head_size, dtype=torch.float32, device=q.device)
    for b in range(batch_size):
        kv_len = ck[b + 1] - ck[b]
        keys, values = _gather_paged(k, block_table[b], kv_len), _gather_paged(v, block_table[b], kv_len)
        out[cq[b]:cq[b + 1]] = _attend_one(q[cq[b]:cq[b + 1]], keys, values, scale, causal, window_size, softcap)
    return out.to(q.dtype)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Paged ``flash_attn_with_kvcache`` without appends: q [batch, seqlen_q, nheads, d] -> same shape."""
    _check_no_extras(0.0, alibi_slopes)
    if any(x is not None for x in (k, v, rotary_cos, rotary_sin, cache_batch_idx, cache_leftpad)) or return_softmax_lse:
        raise NotImplementedError("reference: appending k/v, rotary, cache_batch_idx, cache_leftpad and "
                                  "return_softmax_lse are not implemented")
    _check(q.dim() == 4, "q must have shape (batch_size, seqlen_q, num_heads, head_size)")
    batch_size, seqlen_q, num_heads, head_size = q.shape
    _check_inputs(q, k_cache, v_cache, block_table, batch_size, head_size)
    if cache_seqlens is None:
        raise NotImplementedError("reference: cache_seqlens is required")
    if isinstance(cache_seqlens, int):  # upstream broadcasts it to k_cache.shape[0], the block count
        cache_seqlens = torch.full((k_cache.shape[0],), cache_seqlens, dtype=torch.int32, device=k_cache.device)
    _check(cache_seqlens.dtype == torch.int32, "seqlens_k must have dtype int32")
    _check(tuple(cache_seqlens.shape) == (batch_size,), "seqlens_k must have shape (batch_size)")

    scale = head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, kv_len in enumerate(cache_seqlens.tolist()):
        keys, values = _gather_paged(k_cache, block_table[b], kv_len), _gather_paged(v_cache, block_table[b], kv_len)
        out[b] = _attend_one(q[b], keys, values, scale, causal, window_size, softcap)
    return out.to(q.dtype)
