"""The paged backend splits decode batches into length buckets; results must not depend on it."""

from __future__ import annotations

import torch

from folo_core import LLM, SamplingParams
from folo_core.attention.backend import CommonAttentionMetadata
from folo_plugins.paged.attention import PagedSDPAMetadataBuilder, PagedSDPABackend
from helpers import random_prompts


def test_buckets_cover_every_decode_once_sorted_by_length():
    lens = torch.randint(1, 200, (40,), dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=torch.arange(41, dtype=torch.int32), query_start_loc_cpu=torch.arange(41, dtype=torch.int32),
        seq_lens=lens, seq_lens_cpu=lens, num_computed_tokens_cpu=lens - 1,
        block_table=torch.arange(40 * 13, dtype=torch.int32).view(40, 13), slot_mapping=torch.zeros(40, dtype=torch.long),
        num_reqs=40, num_actual_tokens=40, max_query_len=1, max_seq_len=int(lens.max()), block_size=16)
    md = PagedSDPAMetadataBuilder(PagedSDPABackend, torch.device("cpu")).build(common)
    assert len(md.decode_buckets) == 4
    covered = torch.cat([b.token_idx for b in md.decode_buckets])
    assert sorted(covered.tolist()) == list(range(40))
    maxima = [int(lens[b.token_idx].max()) for b in md.decode_buckets]
    assert maxima == sorted(maxima)
    for b in md.decode_buckets:  # each bucket pads only to its own longest request
        assert b.num_blocks == -(-int(lens[b.token_idx].max()) // 16)
        assert b.mask.sum() == lens[b.token_idx].sum()


def test_many_decodes_match_the_reference_backend(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(40, 512, seed=40, min_len=1, max_len=120)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    naive = LLM(path, skip_tokenizer_init=True, dtype="float32", attention_backend="naive")
    paged = LLM(path, skip_tokenizer_init=True, dtype="float32", attention_backend="paged")
    expected = [o.outputs[0].token_ids for o in naive.generate(prompts, params, use_tqdm=False)]
    assert [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)] == expected
