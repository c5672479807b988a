"""Prefix caching: identical greedy outputs with it on and off, hits counted, salts isolated."""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from helpers import random_prompts

BLOCK = 8
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir("qwen2"))


def workloads() -> dict[str, list[list[int]]]:
    shared = random_prompts(1, 512, seed=21, min_len=40, max_len=40)[0]
    tails = random_prompts(4, 512, seed=22, min_len=1, max_len=9)
    return {
        "prefix ends inside a block": [shared[:21] + t for t in tails],
        "prefix ends on a block boundary": [shared[:3 * BLOCK] + t for t in tails],
        "fully cached prompt": [shared[:4 * BLOCK]] * 3,
    }


@pytest.mark.parametrize("name", list(workloads()))
def test_outputs_identical_with_and_without_caching(model, name):
    prompts = [{"prompt_token_ids": p} for p in workloads()[name]]
    off = LLM(model, skip_tokenizer_init=True, dtype="float32", block_size=BLOCK, enable_prefix_caching=False)
    on = LLM(model, skip_tokenizer_init=True, dtype="float32", block_size=BLOCK, enable_prefix_caching=True)
    expected = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY, use_tqdm=False)]
    on.generate(prompts[:1], GREEDY, use_tqdm=False)  # warm the cache
    outputs = on.generate(prompts, GREEDY, use_tqdm=False)  # served from cached blocks
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(o.num_cached_tokens > 0 for o in outputs)
    stats = on.llm_engine.get_stats().prefix_cache
    assert stats.hits > 0 and 0 < stats.hit_rate < 1


def test_hits_are_reported_and_reset(model):
    llm = LLM(model, skip_tokenizer_init=True, block_size=BLOCK)
    prompt = {"prompt_token_ids": random_prompts(1, 512, seed=30, min_len=33, max_len=33)[0]}
    llm.generate(prompt, GREEDY, use_tqdm=False)
    second = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert second.num_cached_tokens == 32  # 4 full blocks; the 33rd token is recomputed
    stats = llm.llm_engine.get_stats().prefix_cache
    assert (stats.queries, stats.hits) == (66, 32)
    assert llm.reset_prefix_cache()
    third = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert third.num_cached_tokens == 0


def test_cache_salt_isolates_requests(model):
    llm = LLM(model, skip_tokenizer_init=True, block_size=BLOCK)
    ids = random_prompts(1, 512, seed=31, min_len=20, max_len=20)[0]
    llm.generate({"prompt_token_ids": ids, "cache_salt": "a"}, GREEDY, use_tqdm=False)
    other = llm.generate({"prompt_token_ids": ids, "cache_salt": "b"}, GREEDY, use_tqdm=False)[0]
    same = llm.generate({"prompt_token_ids": ids, "cache_salt": "a"}, GREEDY, use_tqdm=False)[0]
    assert other.num_cached_tokens == 0 and same.num_cached_tokens == 16


def test_preemption_with_shared_blocks(model):
    """Requests sharing cached blocks under a tiny cache: preemption never frees a block in use."""
    shared = random_prompts(1, 512, seed=32, min_len=16, max_len=16)[0]
    prompts = [{"prompt_token_ids": shared + t} for t in random_prompts(6, 512, seed=33, min_len=2, max_len=6)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    reference = LLM(model, skip_tokenizer_init=True, dtype="float32", enable_prefix_caching=False)
    expected = [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)]
    tight = LLM(model, skip_tokenizer_init=True, dtype="float32", block_size=4, num_gpu_blocks_override=16,
                enable_prefix_caching=True, max_num_batched_tokens=12, max_num_seqs=6)
    outputs = tight.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    engine = tight.llm_engine
    assert engine.engine_core.scheduler.num_preemptions > 0
    assert engine.get_stats().prefix_cache.hits > 0
    assert engine.get_stats().kv_cache_usage == 0.0
