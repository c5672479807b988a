"""The paged backend's decode path: the C++ kernel and the SDPA buckets must not change results."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from folo_core.attention.backend import CommonAttentionMetadata
from folo_core.testing import AttentionBackendConformance
from folo_plugins.paged.attention import PagedSDPABackend, PagedSDPAMetadataBuilder, cpu_decode_kernel_available
from helpers import random_prompts


class _SDPABuilder(PagedSDPAMetadataBuilder):
    use_cpu_kernel = False  # the fallback for machines without a C++ compiler


class _SDPABackend(PagedSDPABackend):
    @staticmethod
    def get_builder_cls():
        return _SDPABuilder


def test_buckets_cover_every_decode_once_sorted_by_length():
    lens = torch.randint(1, 200, (40,), dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=torch.arange(41, dtype=torch.int32), query_start_loc_cpu=torch.arange(41, dtype=torch.int32),
        seq_lens=lens, seq_lens_cpu=lens, num_computed_tokens_cpu=lens - 1,
        block_table=torch.arange(40 * 13, dtype=torch.int32).view(40, 13), slot_mapping=torch.zeros(40, dtype=torch.long),
        num_reqs=40, num_actual_tokens=40, max_query_len=1, max_seq_len=int(lens.max()), block_size=16)
    md = _SDPABuilder(PagedSDPABackend, torch.device("cpu")).build(common)
    assert 1 < len(md.decode_buckets) <= 4  # lengths that spread: split, up to 4 calls
    covered = torch.cat([b.token_idx for b in md.decode_buckets])
    assert sorted(covered.tolist()) == list(range(40))
    maxima = [int(lens[b.token_idx].max()) for b in md.decode_buckets]
    assert maxima == sorted(maxima)
    for b in md.decode_buckets:  # each bucket pads only to its own longest request
        assert b.block_table.shape[1] == -(-int(lens[b.token_idx].max()) // 16)
        assert b.mask.sum() == lens[b.token_idx].sum()


def test_alike_lengths_share_one_bucket_in_batch_order():
    """Splitting 32 decodes of about the same length would only add calls: one bucket, no gather."""
    n = 32
    lens = torch.randint(200, 210, (n,), dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=torch.arange(n + 1, dtype=torch.int32), query_start_loc_cpu=torch.arange(n + 1, dtype=torch.int32),
        seq_lens=lens, seq_lens_cpu=lens, num_computed_tokens_cpu=lens - 1,
        block_table=torch.arange(n * 14, dtype=torch.int32).view(n, 14), slot_mapping=torch.zeros(n, dtype=torch.long),
        num_reqs=n, num_actual_tokens=n, max_query_len=1, max_seq_len=int(lens.max()), block_size=16)
    md = _SDPABuilder(PagedSDPABackend, torch.device("cpu")).build(common)
    assert len(md.decode_buckets) == 1 and md.decode_buckets[0].token_idx is None
    assert md.decode_buckets[0].mask.sum() == lens.sum()


def test_many_decodes_match_the_reference_backend(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(40, 512, seed=40, min_len=1, max_len=120)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    naive = LLM(path, skip_tokenizer_init=True, dtype="float32", attention_backend="naive")
    paged = LLM(path, skip_tokenizer_init=True, dtype="float32", attention_backend="paged")
    expected = [o.outputs[0].token_ids for o in naive.generate(prompts, params, use_tqdm=False)]
    assert [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)] == expected


class TestSDPAFallbackConformance(AttentionBackendConformance):
    """The SDPA decode buckets (where the C++ kernel cannot be built) pass the kit on their own."""

    backend = _SDPABackend


def test_cpu_kernel_reads_only_each_request_tokens():
    """Garbage (NaN) outside each request's tokens must not reach its output."""
    assert cpu_decode_kernel_available()  # a C++ compiler is part of the supported CPU setup
    torch.manual_seed(0)
    key_cache = torch.full((12, 4, 2, 8), float("nan"))
    value_cache = torch.full((12, 4, 2, 8), float("nan"))
    block_table = torch.tensor([[3, 5, 0], [7, 0, 0]], dtype=torch.int32)
    seq_lens = torch.tensor([6, 3], dtype=torch.int32)
    for row, n in enumerate(seq_lens.tolist()):
        for pos in range(n):
            block, offset = block_table[row, pos // 4], pos % 4
            key_cache[block, offset] = torch.randn(2, 8)
            value_cache[block, offset] = torch.randn(2, 8)
    q = torch.randn(2, 6, 8)  # 6 query heads over 2 KV heads
    out = torch.ops.folo_cpu.paged_decode_attention(q, key_cache, value_cache, block_table, seq_lens, 0.3, 0, 0.0)
    torch.testing.assert_close(out, reference_decode(q, key_cache, value_cache, block_table, seq_lens, 0.3, 0, 0.0),
                               atol=1e-5, rtol=1e-5)


def test_decodes_take_one_kernel_call_unless_disabled():
    n = 64
    lens = torch.randint(1, 300, (n,), dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=torch.arange(n + 1, dtype=torch.int32), query_start_loc_cpu=torch.arange(n + 1, dtype=torch.int32),
        seq_lens=lens, seq_lens_cpu=lens, num_computed_tokens_cpu=lens - 1,
        block_table=torch.zeros(n, 19, dtype=torch.int32), slot_mapping=torch.zeros(n, dtype=torch.long),
        num_reqs=n, num_actual_tokens=n, max_query_len=1, max_seq_len=300, block_size=16)
    default = PagedSDPAMetadataBuilder(PagedSDPABackend, torch.device("cpu")).build(common)
    fallback = _SDPABuilder(PagedSDPABackend, torch.device("cpu")).build(common)
    assert len(default.decode_buckets) == 1 and default.decode_buckets[0].kernel
    assert default.decode_buckets[0].token_idx is None and default.decode_buckets[0].slots is None
    assert len(fallback.decode_buckets) > 1 and not any(b.kernel for b in fallback.decode_buckets)


def reference_decode(q, key_cache, value_cache, block_table, seq_lens, scale, window, cap):
    """The kernel's contract in float32 torch ops: each row's last ``window`` positions (all if 0)."""
    kv_heads, head_size, block_size = key_cache.shape[2], key_cache.shape[3], key_cache.shape[1]
    group = q.shape[1] // kv_heads
    out = []
    for row, n in enumerate(seq_lens.tolist()):
        first = max(0, n - window) if window else 0
        slots = torch.tensor([int(block_table[row, p // block_size]) * block_size + p % block_size
                              for p in range(first, n)])
        k = key_cache.view(-1, kv_heads, head_size)[slots].float()
        v = value_cache.view(-1, kv_heads, head_size)[slots].float()
        scores = torch.einsum("hgd,nhd->hgn", q[row].float().view(kv_heads, group, head_size), k) * scale
        if cap:
            scores = cap * torch.tanh(scores / cap)
        out.append(torch.einsum("hgn,nhd->hgd", scores.softmax(-1), v).reshape(-1, head_size))
    return torch.stack(out)


# Head sizes on and off the vector width (16 floats with AVX-512, 8 with AVX2: 8, 72, 80, 96
# leave scalar tails or fit exactly), GQA groups of 1 to 20 (over 8 splits into register tiles).
@pytest.mark.parametrize("heads,kv_heads,head_size", [(9, 3, 64), (14, 2, 64), (32, 8, 128), (4, 4, 80),
                                                      (6, 2, 8), (40, 2, 96), (16, 1, 72)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_kernel_matches_the_reference_math(heads, kv_heads, head_size, dtype):
    assert cpu_decode_kernel_available()
    generator = torch.Generator().manual_seed(heads * head_size)
    key_cache = torch.randn(64, 16, kv_heads, head_size, generator=generator).to(dtype)
    value_cache = torch.randn(64, 16, kv_heads, head_size, generator=generator).to(dtype)
    seq_lens = torch.tensor([1, 17, 33, 150, 5], dtype=torch.int32)  # within, across and on block edges
    block_table = torch.randperm(64, generator=generator)[:50].view(5, 10).to(torch.int32)
    q = torch.randn(5, heads, head_size, generator=generator).to(dtype)
    # Products and sums in float32 either way; the output is rounded once to ``dtype``.
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    for window, cap in [(0, 0.0), (20, 0.0), (0, 30.0)]:
        out = torch.ops.folo_cpu.paged_decode_attention(q, key_cache, value_cache, block_table, seq_lens,
                                                        head_size ** -0.5, window, cap)
        expected = reference_decode(q, key_cache, value_cache, block_table, seq_lens, head_size ** -0.5, window, cap)
        torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.skipif(not cpu_decode_kernel_available(), reason="no C++ compiler for the CPU kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_cache_write_matches_index_copy(dtype: torch.dtype) -> None:
    """``write_kv``'s C++ row copy leaves both caches exactly as ``write_to_kv_cache`` does, for
    keys that are strided views of a fused QKV output and for float32 keys into a lower-precision
    cache; a slot outside the cache is an error, not a stray write."""
    from folo_core.attention.ops import write_to_kv_cache
    from folo_plugins.paged.attention import write_kv

    gen = torch.Generator().manual_seed(3)
    blocks, block_size, kv_heads, head = 6, 4, 3, 8
    kv_cache = torch.randn(2, blocks, block_size, kv_heads, head, generator=gen).to(dtype)
    expected = kv_cache.clone()
    qkv = torch.randn(5, (4 + 2 * kv_heads) * head, generator=gen)  # 4 query heads, then K, then V
    key = qkv[:, 4 * head:(4 + kv_heads) * head].view(5, kv_heads, head)
    value = qkv[:, (4 + kv_heads) * head:].view(5, kv_heads, head)
    slots = torch.tensor([23, 0, 7, 12, 5])
    for src_key, src_value in ((key.to(dtype), value.to(dtype)), (key, value)):
        write_to_kv_cache(*expected.unbind(0), src_key, src_value, slots)
        write_kv(*kv_cache.unbind(0), src_key, src_value, slots)
        assert torch.equal(kv_cache, expected)
    with pytest.raises(RuntimeError, match="outside the cache"):
        write_kv(*kv_cache.unbind(0), key.to(dtype), value.to(dtype), torch.tensor([0, 1, 2, 3, 24]))
