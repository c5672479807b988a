"""The pure-torch flash-attn reference keeps the upstream semantics the backend relies on."""

from __future__ import annotations

import pytest
import torch

import flash_attn_reference as far
from folo_core.attention.ops import causal_attention


def cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def paged(seqs: list[torch.Tensor], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter per-sequence [L, Hk, d] into a cache of reversed blocks; returns (cache, block_table)."""
    per_seq = [-(-len(s) // block_size) for s in seqs]
    total = sum(per_seq)
    cache = torch.randn(total, block_size, *seqs[0].shape[1:])
    table = torch.zeros(len(seqs), max(per_seq), dtype=torch.int32)
    block = total
    for b, seq in enumerate(seqs):
        for i in range(per_seq[b]):
            block -= 1
            table[b, i] = block
            chunk = seq[i * block_size:(i + 1) * block_size]
            cache[block, :len(chunk)] = chunk
    return cache, table


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_varlen_paged_mixed_batch_matches_causal_attention(heads, kv_heads):
    torch.manual_seed(0)
    lens_q, lens_k = [300, 1, 17], [300, 600, 530]  # prefill, decode, chunk continuing after 513 cached
    keys = [torch.randn(n, kv_heads, 16) for n in lens_k]
    values = [torch.randn(n, kv_heads, 16) for n in lens_k]
    (k_cache, table), (v_cache, _) = paged(keys, 256), paged(values, 256)
    q = torch.randn(sum(lens_q), heads, 16)
    out = far.flash_attn_varlen_func(q, k_cache, v_cache, cu(lens_q), cu(lens_k), 300, 600, softmax_scale=0.3,
                                     causal=True, block_table=table)
    starts = cu(lens_q).tolist()
    for b in range(3):
        expected = causal_attention(q[starts[b]:starts[b + 1]], keys[b], values[b], 0.3)
        torch.testing.assert_close(out[starts[b]:starts[b + 1]], expected, atol=1e-5, rtol=1e-5)


def test_kvcache_decode_equals_varlen_decode():
    torch.manual_seed(1)
    lens = [10, 300, 3]
    k_cache, table = paged([torch.randn(n, 2, 16) for n in lens], 256)
    v_cache, _ = paged([torch.randn(n, 2, 16) for n in lens], 256)
    q = torch.randn(3, 4, 16)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    decode = far.flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=seqlens,
                                         block_table=table, causal=True).squeeze(1)
    varlen = far.flash_attn_varlen_func(q, k_cache, v_cache, cu([1, 1, 1]), cu(lens), 1, 300, causal=True,
                                        block_table=table)
    torch.testing.assert_close(decode, varlen)


def test_causal_mask_is_bottom_right_aligned():
    # 5 queries over 2 keys: the first 3 rows see nothing (zeros), row 3 sees key 0 only.
    q, k, v = torch.randn(5, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    k_cache, table = paged([k], 256)
    v_cache, _ = paged([v], 256)
    out = far.flash_attn_varlen_func(q, k_cache, v_cache, cu([5]), cu([2]), 5, 2, causal=True, block_table=table)
    assert torch.all(out[:3] == 0)
    torch.testing.assert_close(out[3, 0], v[0, 0])


def test_upstream_rejections():
    k_cache, table = paged([torch.randn(20, 2, 8)], 16)
    q = torch.randn(4, 2, 8)
    with pytest.raises(RuntimeError, match="divisible by 256"):
        far.flash_attn_varlen_func(q, k_cache, k_cache, cu([4]), cu([20]), 4, 20, causal=True, block_table=table)
    k_cache, table = paged([torch.randn(300, 2, 8), torch.randn(3, 2, 8)], 256)  # 3 blocks, 2 sequences
    q = torch.randn(2, 1, 4, 8)
    with pytest.raises(RuntimeError, match=r"seqlens_k must have shape \(batch_size\)"):
        far.flash_attn_with_kvcache(q, k_cache, k_cache, cache_seqlens=5, block_table=table)
    with pytest.raises(RuntimeError, match="one query token per sequence"):
        far.flash_attn_varlen_func(q[:1, 0], k_cache, k_cache, torch.tensor([0, 1, 1], dtype=torch.int32),
                                   cu([20, 3]), 1, 20, causal=True, block_table=table)
    with pytest.raises(RuntimeError, match="block_table must have dtype torch.int32"):
        far.flash_attn_with_kvcache(q, k_cache, k_cache, cache_seqlens=torch.tensor([20, 3], dtype=torch.int32),
                                    block_table=table.long())


def test_float32_rejected_in_strict_mode(monkeypatch):
    monkeypatch.setattr(far, "ALLOW_FLOAT32", False)
    k_cache, table = paged([torch.randn(4, 1, 8)], 256)
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        far.flash_attn_varlen_func(torch.randn(4, 1, 8), k_cache, k_cache, cu([4]), cu([4]), 4, 4,
                                   block_table=table)
