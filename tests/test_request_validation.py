"""Every request value that could fail an engine step is refused where the request enters.

Each case here once passed validation and then failed inside ``InputBatch.add_request``
or the sampler, failing every request in flight. Now ``generate`` raises a
``ValueError`` naming the field before anything is queued, and the engine keeps serving.
"""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from helpers import random_prompts

VOCAB = 512  # the tiny models' vocabulary


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir("llama")), skip_tokenizer_init=True, max_model_len=64, num_gpu_blocks_override=32,
               block_size=4)


def prompt(seed: int = 0) -> dict:
    return {"prompt_token_ids": random_prompts(1, VOCAB, seed=seed, max_len=10)[0]}


def assert_untouched(llm: LLM) -> None:
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.get_stats().kv_cache_usage == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=2**64, temperature=1.0), "seed must be a 64-bit integer"),
    (dict(seed=-(2**63) - 1, temperature=1.0), "seed must be a 64-bit integer"),
    (dict(seed=2**63 - 1, n=2, temperature=1.0), r"seed \+ n - 1 must fit a 64-bit integer"),
    (dict(top_k=2**63, temperature=1.0), "top_k must be a 64-bit integer"),
    (dict(top_k=-2, temperature=1.0), r"top_k must be 0 or -1 \(disable\), or at least 1"),
    (dict(min_tokens=2**63, max_tokens=None), "min_tokens must be a 64-bit integer"),
    (dict(stop_token_ids="12"), "stop_token_ids must be a list of non-negative integers"),
    (dict(stop_token_ids=[-1]), "stop_token_ids must be a list of non-negative integers"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(top_p=float("inf")), "top_p must be a finite number"),
    (dict(repetition_penalty="2"), "repetition_penalty must be a finite number"),
    (dict(n=True), "n must be a 64-bit integer"),
    (dict(max_tokens=1.5), "max_tokens must be a 64-bit integer"),
    (dict(stop=[""]), "stop must be a non-empty string"),
    (dict(stop=3), "stop must be a non-empty string"),
])
def test_sampling_params_refuse_values_a_step_cannot_take(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_tokens=3, stop_token_ids=[VOCAB + 5]), rf"stop_token_ids entry {VOCAB + 5} is out of vocabulary"),
    (dict(logprobs=VOCAB + 1), f"Requested sample logprobs of {VOCAB + 1}, which is greater than max allowed: 20"),
    (dict(logprobs=21), "greater than max allowed: 20"),
])
def test_model_dependent_limits_fail_at_generate(llm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm.generate([prompt(1), prompt(2)], SamplingParams(max_tokens=3, **kwargs), use_tqdm=False)
    assert_untouched(llm)


def test_fields_changed_after_construction_are_checked_again(llm):
    params = SamplingParams(temperature=1.0, max_tokens=3)
    params.seed = 2**70
    with pytest.raises(ValueError, match="seed must be a 64-bit integer"):
        llm.generate(prompt(), params, use_tqdm=False)
    assert_untouched(llm)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=2**63 - 1, temperature=1.0, seed=1),  # larger than the vocabulary: no truncation
    dict(min_tokens=2**62, max_tokens=None, stop_token_ids=[3]),  # more than any output can reach
    dict(seed=2**63 - 2, n=2, temperature=1.0),
    dict(seed=-(2**63), temperature=1.0),
    dict(top_k=-1, temperature=1.0, seed=3),
])
def test_extreme_but_valid_values_run(llm, kwargs):
    outputs = llm.generate(prompt(), SamplingParams(**{"max_tokens": 4, "ignore_eos": True, **kwargs}),
                           use_tqdm=False)
    assert all(c.finish_reason == "length" and c.token_ids for c in outputs[0].outputs)
    assert_untouched(llm)


def test_top_k_above_vocabulary_samples_as_no_top_k(llm):
    base = dict(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    huge = llm.generate(prompt(), SamplingParams(top_k=10**12, **base), use_tqdm=False)[0].outputs[0]
    none = llm.generate(prompt(), SamplingParams(top_k=0, **base), use_tqdm=False)[0].outputs[0]
    assert huge.token_ids == none.token_ids


def test_max_logprobs_minus_one_allows_the_vocabulary(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama")), skip_tokenizer_init=True, max_model_len=32, max_logprobs=-1)
    out = llm.generate(prompt(), SamplingParams(temperature=0, max_tokens=1, logprobs=VOCAB), use_tqdm=False)
    assert len(out[0].outputs[0].logprobs[0]) >= VOCAB


def test_overlong_text_is_refused_before_tokenizing(tiny_chat_model_dir):
    llm = LLM(str(tiny_chat_model_dir), max_model_len=32)
    processor = llm.llm_engine.processor
    longest = max(map(len, llm.get_tokenizer().get_vocab()))
    assert processor.max_prompt_chars >= 32 * longest  # never refuses a text that could fit
    calls = []
    tokenizer = processor.tokenizer
    original = tokenizer.encode
    tokenizer.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with pytest.raises(ValueError, match=r"The prompt has \d+ characters; no text longer than"):
            llm.generate("a" * (processor.max_prompt_chars + 1), SamplingParams(max_tokens=2), use_tqdm=False)
        assert not calls
        with pytest.raises(ValueError, match="longer than the maximum model length of 32"):
            llm.generate("hello " * 40, SamplingParams(max_tokens=2), use_tqdm=False)
        assert calls
    finally:
        tokenizer.encode = original
    assert_untouched(llm)
