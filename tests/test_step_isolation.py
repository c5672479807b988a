"""One request cannot hurt another: failures are pinned on the requests they touch.

- a request that cannot join the runner's batch fails alone; the step runs without it;
- a failing step fails the requests it ran; scheduler, KV manager and runner then still
  agree on every surviving request's blocks, and survivors' greedy output is unchanged;
- a seeded request samples the same tokens with and without preemption.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from folo_core import LLM, SamplingParams
from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.errors import EngineStepError
from folo_core.request import RequestStatus
from folo_core.worker.input_batch import InputBatch
from helpers import random_prompts

VOCAB = 512
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
POISON_SEED = 424242  # passes validation; the patched batch refuses it


@pytest.fixture
def poison(monkeypatch):
    """Make ``InputBatch.add_request`` fail (half-way, after taking a row) for seed POISON_SEED."""
    original = InputBatch.add_request

    def add_request(self, data):
        row = original(self, data)
        if data.sampling_params.seed == POISON_SEED:
            raise OverflowError("simulated bad value")
        return row

    monkeypatch.setattr(InputBatch, "add_request", add_request)


def views_agree(engine_core) -> None:
    """Every request the runner holds is running with the blocks the scheduler sent it, and
    every running request the scheduler thinks the runner holds, it holds."""
    scheduler, kv, batch = engine_core.scheduler, engine_core.kv_cache_manager, engine_core.executor.model_runner.input_batch
    to_drop = scheduler._finished_req_ids | scheduler._preempted_req_ids
    for req_id in batch.req_ids:
        if req_id in to_drop:
            continue
        request = scheduler.requests[req_id]
        assert request.status == RequestStatus.RUNNING, req_id
        row = batch.req_id_to_index[req_id]
        sent = scheduler._sent_blocks[req_id]
        assert batch.block_table[row, :batch.num_blocks[row]].tolist() == kv.get_block_ids(req_id)[:sent], req_id
        assert batch.num_tokens[row] == request.num_tokens, req_id
    for request in scheduler.running:
        if request.request_id in scheduler._runner_known:
            assert request.request_id in batch.req_id_to_index


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("qwen3")


def engine_llm(model_dir, **kwargs) -> LLM:
    return LLM(str(model_dir), skip_tokenizer_init=True, max_model_len=64, block_size=4, **kwargs)


def test_request_that_cannot_join_the_batch_fails_alone(model_dir, poison):
    llm = engine_llm(model_dir)
    prompts = [{"prompt_token_ids": p} for p in random_prompts(4, VOCAB, seed=1)]
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    params = [GREEDY, GREEDY.clone(), GREEDY, GREEDY]
    params[1] = SamplingParams(temperature=1.0, seed=POISON_SEED, max_tokens=12, ignore_eos=True)
    with pytest.raises(EngineStepError, match="1 of 4 request.*OverflowError: simulated bad value") as info:
        llm.generate(prompts, params, use_tqdm=False)
    outputs = info.value.outputs
    assert outputs[1].outputs[0].finish_reason == "error" and not outputs[1].outputs[0].token_ids
    assert [outputs[i].outputs[0].token_ids for i in (0, 2, 3)] == [expected[i] for i in (0, 2, 3)]
    assert llm.llm_engine.get_stats().kv_cache_usage == 0.0
    assert llm.llm_engine.engine_core.executor.model_runner.input_batch.num_reqs <= 4  # dropped at the next step


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), failure_rate=st.sampled_from([0.1, 0.3]),
       where=st.sampled_from(["before", "forward", "sampler"]))
def test_random_step_failures_leave_consistent_views(model_dir, seed, failure_rate, where):
    """Steps fail at random (before the runner reads the decision, in the forward, in the
    sampler) under preemption pressure; survivors finish exactly as in a clean run."""
    llm = engine_llm(model_dir, num_gpu_blocks_override=14)
    core = llm.llm_engine.engine_core
    runner = core.executor.model_runner
    rng = random.Random(seed)
    prompts = random_prompts(6, VOCAB, seed=seed, min_len=3, max_len=14)
    clean = {i: o.outputs[0].token_ids for i, o in enumerate(
        engine_llm(model_dir).generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))}

    def maybe_fail() -> None:
        if rng.random() < failure_rate:
            raise RuntimeError(f"injected failure ({where})")

    real_execute, real_run_model, real_sampler = runner.execute_model, runner._run_model, runner.sampler
    if where == "before":
        runner.execute_model = lambda so: (maybe_fail(), real_execute(so))[1]
    elif where == "forward":
        runner._run_model = lambda *a: (maybe_fail(), real_run_model(*a))[1]
    else:
        runner.sampler = lambda *a: (maybe_fail(), real_sampler(*a))[1]

    engine = llm.llm_engine
    for i, p in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": p}, GREEDY)
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = out.outputs[0]
        views_agree(core)
    assert len(finished) == len(prompts)
    for i, completion in finished.items():
        if completion.finish_reason == "error":
            assert "injected failure" in completion.error
        else:
            assert completion.token_ids == clean[i], f"request {i} changed after failures"
    assert engine.get_stats().kv_cache_usage == 0.0


def test_seeded_sampling_is_the_same_under_preemption(model_dir):
    prompts = [{"prompt_token_ids": p} for p in random_prompts(6, VOCAB, seed=5, min_len=6, max_len=12)]
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=100 + i, max_tokens=16, ignore_eos=True)
              for i in range(len(prompts))]
    roomy = engine_llm(model_dir)
    expected = [o.outputs[0].token_ids for o in roomy.generate(prompts, params, use_tqdm=False)]
    tight = engine_llm(model_dir, num_gpu_blocks_override=14)
    got = [o.outputs[0].token_ids for o in tight.generate(prompts, params, use_tqdm=False)]
    assert tight.llm_engine.engine_core.scheduler.num_preemptions > 0
    assert got == expected
    assert not tight.llm_engine.engine_core.executor.model_runner.input_batch.generators or \
        set(tight.llm_engine.engine_core.executor.model_runner.input_batch.generators) <= \
        set(tight.llm_engine.engine_core.executor.model_runner.input_batch.req_ids)


def test_one_poisoned_stream_among_16_leaves_the_others_correct(tiny_chat_model_dir, poison):
    texts = [f"Request number {i} says" for i in range(16)]
    offline = LLM(str(tiny_chat_model_dir), max_model_len=256)
    expected = {i: o.outputs[0].text for i, o in enumerate(offline.generate(texts, GREEDY, use_tqdm=False))}
    llm = AsyncLLM.from_engine_args(model=str(tiny_chat_model_dir), max_model_len=256)
    poisoned = 7

    async def run(i: int) -> str:
        params = (SamplingParams(temperature=1.0, seed=POISON_SEED, max_tokens=12, ignore_eos=True)
                  if i == poisoned else GREEDY)
        text = ""
        async for output in llm.generate(texts[i], params, f"r{i}"):
            text += output.outputs[0].text
        return text

    async def main():
        return await asyncio.gather(*(run(i) for i in range(16)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        llm.shutdown()
    assert isinstance(results[poisoned], EngineStepError) and "simulated bad value" in str(results[poisoned])
    for i, result in enumerate(results):
        if i != poisoned:
            assert result == expected[i], i
    assert np.all(llm.engine.get_stats().kv_cache_usage == 0.0)
