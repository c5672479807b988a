"""logit_bias, allowed_token_ids and bad_words: applied before any sampler, so every sampler obeys them."""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from helpers import random_prompts

VOCAB = 512


@pytest.fixture(scope="module")
def llm(tiny_model_dir) -> LLM:
    return LLM(str(tiny_model_dir("llama")), skip_tokenizer_init=True, max_model_len=64)


def prompts(n: int = 4) -> list[dict]:
    return [{"prompt_token_ids": p} for p in random_prompts(n, VOCAB, seed=11, max_len=12)]


def greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, **kwargs)


def test_minus_100_bans_a_token_and_plus_100_forces_it(llm):
    free = llm.generate(prompts(), greedy(), use_tqdm=False)
    first = free[0].outputs[0].token_ids[0]
    banned = llm.generate(prompts(), greedy(logit_bias={first: -100.0}), use_tqdm=False)
    assert first not in banned[0].outputs[0].token_ids
    forced = llm.generate(prompts(), SamplingParams(temperature=1.0, seed=0, max_tokens=10, ignore_eos=True,
                                                    logit_bias={7: 100.0}), use_tqdm=False)
    assert all(o.outputs[0].token_ids == [7] * 10 for o in forced)


def test_allowed_token_ids_are_the_only_ones_sampled(llm):
    allowed = [3, 50, 99, 400]
    outputs = llm.generate(prompts(), SamplingParams(temperature=1.5, seed=1, max_tokens=16, ignore_eos=True,
                                                     allowed_token_ids=allowed, repetition_penalty=2.0),
                           use_tqdm=False)
    assert all(set(o.outputs[0].token_ids) <= set(allowed) for o in outputs)


def test_only_the_requests_that_ask_are_changed(llm):
    plain = llm.generate(prompts(), greedy(), use_tqdm=False)
    mixed = llm.generate(prompts(), [greedy(allowed_token_ids=[5]), greedy(), greedy(), greedy()], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == [5] * 10
    assert [o.outputs[0].token_ids for o in mixed[1:]] == [o.outputs[0].token_ids for o in plain[1:]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(logit_bias={VOCAB: 1.0}), f"logit_bias entry {VOCAB} is out of vocabulary"),
    (dict(allowed_token_ids=[1, VOCAB + 3]), f"allowed_token_ids entry {VOCAB + 3} is out of vocabulary"),
])
def test_out_of_vocabulary_ids_are_refused(llm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompts(), greedy(**kwargs), use_tqdm=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(logit_bias={-1: 1.0}), "logit_bias must map"),
    (dict(logit_bias={1: float("nan")}), "logit_bias must map"),
    (dict(allowed_token_ids=[]), "allowed_token_ids must be a non-empty list"),
    (dict(bad_words=[""]), "bad_words must be a list of non-empty strings"),
])
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_words_are_never_generated(tiny_chat_model_dir):
    llm = LLM(str(tiny_chat_model_dir), max_model_len=256)
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    text = llm.generate(["Once upon a time"], params, use_tqdm=False)[0].outputs[0]
    words = [w for w in text.text.split() if len(tokenizer.encode(" " + w, add_special_tokens=False)) >= 2][:2]
    assert words, text.text
    params.bad_words = words
    out = llm.generate(["Once upon a time"], params, use_tqdm=False)[0].outputs[0]
    for word in words:
        for variant in (word, " " + word):
            ids = tokenizer.encode(variant, add_special_tokens=False)
            assert not any(out.token_ids[i:i + len(ids)] == ids for i in range(len(out.token_ids))), (word, out.text)
