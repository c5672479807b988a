"""Greedy outputs stay identical to HF under every scheduling/cache setting that matters."""

from __future__ import annotations

import pytest

from folo_core import LLM, LLMEngine, SamplingParams
from folo_core.config import EngineConfig
from helpers import hf_greedy, random_prompts

MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def case(tiny_model_dir):
    path = tiny_model_dir("qwen3")
    prompts = random_prompts(8, 512, seed=11, min_len=3, max_len=45)
    return path, prompts, hf_greedy(path, prompts, MAX_TOKENS)


SETTINGS = {
    "preemption (tiny cache)": dict(num_gpu_blocks_override=14, block_size=4),
    "block size 1": dict(block_size=1),
    "block size 16": dict(block_size=16),
    "block larger than any prompt": dict(block_size=128),
    "chunk every prompt": dict(max_num_batched_tokens=8, max_num_seqs=4),
    "long prefill threshold": dict(long_prefill_token_threshold=5),
    "no chunked prefill": dict(enable_chunked_prefill=False),
    "priority policy": dict(scheduling_policy="priority", num_gpu_blocks_override=14, block_size=4),
    "one at a time": dict(max_num_seqs=1),
    "simple scheduler + naive cache": dict(scheduler="simple", kv_cache_manager="naive", block_size=8),
    "naive cache under preemption": dict(kv_cache_manager="naive", num_gpu_blocks_override=14, block_size=4),
    "preemption + chunking + no prefix cache": dict(num_gpu_blocks_override=14, block_size=4,
                                                    max_num_batched_tokens=6, max_num_seqs=6,
                                                    enable_prefix_caching=False),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_hf(case, setting):
    path, prompts, expected = case
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", **SETTINGS[setting])
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    engine = llm.llm_engine
    assert engine.get_stats().kv_cache_usage == 0.0  # every block returned
    if "preemption" in setting:
        assert engine.engine_core.scheduler.num_preemptions > 0


def test_requests_added_between_steps_and_aborted(case):
    path, prompts, expected = case
    engine = LLMEngine(EngineConfig.from_kwargs(model=str(path), skip_tokenizer_init=True, dtype="float32",
                                                max_num_batched_tokens=16, max_num_seqs=4))
    finished: dict[str, list[int]] = {}
    pending = list(enumerate(prompts))
    engine.add_request("abort-me", {"prompt_token_ids": prompts[0]}, GREEDY)
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and steps % 2 == 0:  # a new request every other step
            i, prompt = pending.pop(0)
            engine.add_request(str(i), {"prompt_token_ids": prompt}, GREEDY)
        if steps == 3:
            engine.abort_request("abort-me")
        for out in engine.step():
            assert out.request_id != "abort-me" or steps < 3
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
        steps += 1
    assert "abort-me" not in finished
    assert [finished[str(i)] for i in range(len(prompts))] == expected
    assert engine.get_stats().kv_cache_usage == 0.0


def test_metrics_on_outputs(case):
    path, prompts, _ = case
    llm = LLM(str(path), skip_tokenizer_init=True)
    out = llm.generate({"prompt_token_ids": prompts[0]}, GREEDY, use_tqdm=False)[0]
    m = out.metrics
    assert m.arrival_time <= m.first_token_time <= m.last_token_time <= m.finished_time
    assert m.time_to_first_token is not None and m.time_to_first_token >= 0


def test_priority_policy_serves_urgent_first(case):
    path, prompts, _ = case
    llm = LLM(str(path), skip_tokenizer_init=True, scheduling_policy="priority", max_num_seqs=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts[:3]], GREEDY, use_tqdm=False,
                        priority=[5, 0, 1])
    order = sorted(range(3), key=lambda i: outs[i].metrics.first_token_time)
    assert order == [1, 2, 0]


def test_abort_of_a_fanned_out_request_aborts_every_child(case):
    path, prompts, _ = case
    engine = LLMEngine(EngineConfig.from_kwargs(model=str(path), skip_tokenizer_init=True))
    engine.add_request("parent", {"prompt_token_ids": prompts[0]},
                       SamplingParams(n=3, temperature=1.0, max_tokens=50, ignore_eos=True))
    assert engine.get_num_unfinished_requests() == 3
    engine.step()
    engine.abort_request("parent")
    assert not engine.has_unfinished_requests()
    assert engine.get_stats().kv_cache_usage == 0.0
    assert engine.step() == []
