"""Granite (Llama plus four multipliers) in the one decoder, against HF transformers."""

from __future__ import annotations

import pytest

from helpers import assert_greedy_matches_hf, assert_prefill_logprobs_match_hf, random_prompts


@pytest.mark.parametrize("options", [
    dict(attention_backend="naive", enable_prefix_caching=False),
    dict(attention_backend="paged", max_num_batched_tokens=32, enable_prefix_caching=True),  # chunked prefill
])
def test_granite_greedy_matches_hf(tiny_model_dir, options):
    path = tiny_model_dir("granite")
    prompts = random_prompts(8, 512, seed=13, min_len=1, max_len=70)
    prompts[1] = prompts[0][:40] + prompts[1][:10]  # a shared prefix for the prefix cache
    assert_greedy_matches_hf(path, prompts, 12, **options)


def test_granite_prefill_logprobs_match_hf(tiny_model_dir):
    path = tiny_model_dir("granite")
    prompt = random_prompts(1, 512, seed=17, min_len=24, max_len=24)[0]
    assert_prefill_logprobs_match_hf(path, prompt)
