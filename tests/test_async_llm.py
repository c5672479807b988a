"""AsyncLLM: streamed DELTA outputs match the synchronous engine; aborts free blocks; errors stay local."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from folo_core.engine.async_llm import AsyncLLM, EngineDeadError, EngineStepError
from folo_core.engine.llm import LLM
from folo_core.engine.stats import IterationStats, StatLoggerBase
from folo_core.outputs import RequestOutput
from folo_core.sampling_params import SamplingParams

ENGINE_ARGS = dict(num_gpu_blocks_override=256, max_model_len=1024)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


class RecordingStatLogger(StatLoggerBase):
    def __init__(self) -> None:
        self.iterations: list[IterationStats] = []

    def record(self, engine_stats, iteration_stats: IterationStats) -> None:
        self.iterations.append(iteration_stats)

    def settle(self, llm: AsyncLLM) -> list[IterationStats]:
        """The iterations so far: a command's reply leaves only after its loop turn was recorded."""
        asyncio.run(llm.get_stats())
        return self.iterations


@pytest.fixture(scope="module")
def stat_logger() -> RecordingStatLogger:
    return RecordingStatLogger()


@pytest.fixture(scope="module")
def async_llm(tiny_chat_model_dir, stat_logger):
    llm = AsyncLLM.from_engine_args(stat_loggers=[stat_logger], model=str(tiny_chat_model_dir), **ENGINE_ARGS)
    yield llm
    llm.shutdown()
    assert not llm.is_running


@pytest.fixture(scope="module")
def offline_llm(tiny_chat_model_dir) -> LLM:
    return LLM(str(tiny_chat_model_dir), **ENGINE_ARGS)


@pytest.fixture(scope="module")
def reference(offline_llm) -> dict[str, tuple[str, list[int]]]:
    """Greedy outputs of the synchronous offline engine, one prompt at a time."""
    result = {}
    for prompt in PROMPTS:
        out = offline_llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0]
        result[prompt] = (out.text, out.token_ids)
    return result


async def collect(llm: AsyncLLM, prompt, params: SamplingParams, request_id: str) -> list[RequestOutput]:
    return [out async for out in llm.generate(prompt, params, request_id)]


def joined(outputs: list[RequestOutput]) -> tuple[str, list[int]]:
    return "".join(o.outputs[0].text for o in outputs), [t for o in outputs for t in o.outputs[0].token_ids]


async def wait_until_idle(llm: AsyncLLM, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        stats = await llm.get_stats()
        if stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0.0:
            return stats
        assert time.monotonic() < deadline, f"engine still busy: {stats}"
        await asyncio.sleep(0.05)


def test_concurrent_streams_match_the_sync_engine(async_llm, reference):
    async def main():
        return await asyncio.gather(*[collect(async_llm, p, GREEDY, f"cc-{i}") for i, p in enumerate(PROMPTS)])

    for prompt, outputs in zip(PROMPTS, asyncio.run(main())):
        assert len(outputs) > 1, "the request was not streamed"
        assert [o.finished for o in outputs] == [False] * (len(outputs) - 1) + [True]
        assert outputs[-1].outputs[0].finish_reason == "length"
        assert joined(outputs) == reference[prompt]


def test_n_choices_stream_their_deltas_by_index(async_llm, offline_llm):
    params = SamplingParams(n=3, temperature=1.0, seed=123, max_tokens=10, ignore_eos=True)
    expected = offline_llm.generate(PROMPTS[2], params, use_tqdm=False)[0].outputs
    outputs = asyncio.run(collect(async_llm, PROMPTS[2], params, "n3"))
    texts, token_ids = ["", "", ""], [[], [], []]
    for out in outputs:
        for completion in out.outputs:
            texts[completion.index] += completion.text
            token_ids[completion.index] += completion.token_ids
    assert [o.finished for o in outputs].count(True) == 1 and outputs[-1].finished
    assert texts == [c.text for c in sorted(expected, key=lambda c: c.index)]
    assert token_ids == [c.token_ids for c in sorted(expected, key=lambda c: c.index)]
    assert len(set(texts)) > 1, "each choice samples on its own"


def test_stop_string_split_across_chunks_is_held_back(async_llm, reference):
    text = reference[PROMPTS[0]][0]
    start = len(text) // 2
    stop = text[start:start + 4]
    expected = text[:text.index(stop)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop])
    outputs = asyncio.run(collect(async_llm, PROMPTS[0], params, "stop"))
    assert "".join(o.outputs[0].text for o in outputs) == expected
    assert outputs[-1].outputs[0].finish_reason == "stop"
    assert outputs[-1].outputs[0].stop_reason == stop


def test_closing_cancelling_or_aborting_a_stream_frees_its_blocks(async_llm, stat_logger):
    long = SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)

    async def close_early():
        stream = async_llm.generate(PROMPTS[1], long, "closed")
        await anext(stream)
        assert (await async_llm.get_stats()).kv_cache_usage > 0
        await stream.aclose()
        return await wait_until_idle(async_llm, timeout=5.0)

    async def cancel_task():
        started = asyncio.Event()

        async def consume():
            async for _ in async_llm.generate(PROMPTS[2], long, "cancelled"):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        assert (await async_llm.get_stats()).kv_cache_usage > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await wait_until_idle(async_llm, timeout=5.0)

    async def abort_by_id():
        outputs = []
        async for out in async_llm.generate(PROMPTS[3], long, "by-id"):
            outputs.append(out)
            async_llm.abort("by-id")  # e.g. a server-side timeout: the stream just ends
        assert outputs and not outputs[-1].finished
        return await wait_until_idle(async_llm, timeout=5.0)

    stat_logger.settle(async_llm).clear()
    asyncio.run(close_early())
    asyncio.run(cancel_task())
    asyncio.run(abort_by_id())
    its = stat_logger.settle(async_llm)
    assert [f.finish_reason for it in its for f in it.finished_requests] == ["abort"] * 3
    generated = sum(it.num_generation_tokens for it in its)
    assert generated < 3 * 900, "the aborted requests ran to their max_tokens"


def test_add_request_errors_reach_only_their_caller(async_llm, reference):
    async def main():
        good = asyncio.create_task(collect(async_llm, PROMPTS[3], GREEDY, "good"))
        with pytest.raises(ValueError, match="longer than the maximum model length"):
            await collect(async_llm, {"prompt_token_ids": [1] * 2000}, GREEDY, "too-long")
        with pytest.raises(ValueError, match="out of vocabulary"):
            await collect(async_llm, {"prompt_token_ids": [10**9]}, GREEDY, "bad-token")
        return await good

    assert joined(asyncio.run(main())) == reference[PROMPTS[3]]


def test_stat_logger_sees_tokens_and_latencies(async_llm, stat_logger):
    prompt_ids = [11, 22, 33, 44, 55]
    stat_logger.settle(async_llm).clear()
    asyncio.run(collect(async_llm, {"prompt_token_ids": prompt_ids},
                        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), "stats"))
    its = stat_logger.settle(async_llm)
    assert sum(it.num_prompt_tokens for it in its) == len(prompt_ids)
    assert sum(it.num_generation_tokens for it in its) == 6
    assert len([t for it in its for t in it.time_to_first_tokens]) == 1
    itl = [t for it in its for t in it.time_per_output_tokens]
    assert len(itl) == 5 and all(t >= 0 for t in itl)
    [finished] = [f for it in its for f in it.finished_requests]
    assert (finished.finish_reason, finished.num_generation_tokens) == ("length", 6)


def test_overload_raises_overflow_error_and_others_keep_running(tiny_chat_model_dir):
    llm = AsyncLLM.from_engine_args(model=str(tiny_chat_model_dir), max_num_seqs=1, max_waiting_requests=1,
                                    **ENGINE_ARGS)
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)

    async def main():
        running = llm.generate(PROMPTS[0], long, "running")
        await anext(running)
        waiting = asyncio.create_task(collect(llm, PROMPTS[1], GREEDY, "waiting"))
        deadline = time.monotonic() + 10
        while (await llm.get_stats()).num_waiting != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(OverflowError, match="overloaded"):
            await collect(llm, PROMPTS[2], GREEDY, "rejected")
        await running.aclose()
        outputs = await waiting
        assert outputs[-1].finished and len(joined(outputs)[1]) == 24
        await wait_until_idle(llm)

    try:
        asyncio.run(main())
    finally:
        llm.shutdown()


def test_failed_step_fails_requests_in_flight_and_the_loop_keeps_serving(tiny_chat_model_dir, monkeypatch):
    llm = AsyncLLM.from_engine_args(model=str(tiny_chat_model_dir), **ENGINE_ARGS)
    real_step = llm.engine.step
    calls = 0

    def flaky_step():
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("simulated kernel failure")
        return real_step()

    monkeypatch.setattr(llm.engine, "step", flaky_step)

    async def main():
        results = await asyncio.gather(*[collect(llm, p, GREEDY, f"f{i}") for i, p in enumerate(PROMPTS[:2])],
                                       return_exceptions=True)
        for result in results:
            assert isinstance(result, EngineStepError) and "simulated kernel failure" in str(result)
        await wait_until_idle(llm)
        after = await collect(llm, PROMPTS[0], GREEDY, "after")
        assert after[-1].outputs[0].finish_reason == "length"

    try:
        asyncio.run(main())
    finally:
        llm.shutdown()


def test_shutdown_answers_every_call_queued_around_it(tiny_chat_model_dir):
    """Calls racing with shutdown either run or get EngineDeadError; none waits forever."""
    llm = AsyncLLM.from_engine_args(model=str(tiny_chat_model_dir), **ENGINE_ARGS)
    futures, errors = [], []

    def hammer() -> None:  # posts until the loop is closed (or 10 s)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                futures.append(llm._post(llm.engine.get_num_unfinished_requests))
            except EngineDeadError:
                errors.append(1)
                return
            time.sleep(0.0005)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    llm.shutdown()
    for thread in threads:
        thread.join()
    assert errors, "no call arrived after the shutdown"
    for future in futures:
        try:
            future.result(timeout=5)  # a lost call raises TimeoutError here
        except EngineDeadError:
            pass


def test_generate_after_shutdown_raises_engine_dead(tiny_chat_model_dir):
    llm = AsyncLLM.from_engine_args(model=str(tiny_chat_model_dir), **ENGINE_ARGS)
    llm.shutdown()
    with pytest.raises(EngineDeadError):
        asyncio.run(collect(llm, PROMPTS[0], GREEDY, "late"))


def test_cancelled_handler_aborts_its_request(async_llm):
    """A server handler cancelled while it waits for a whole response (timeout, shutdown)
    must not leave its request running to max_tokens."""
    from folo_core.entrypoints.openai.protocol import CompletionRequest
    from folo_core.entrypoints.openai.serving_completion import OpenAIServingCompletion

    serving = OpenAIServingCompletion(async_llm, "m")

    class NeverDisconnects:
        async def receive(self):
            await asyncio.Event().wait()

    async def main():
        request = CompletionRequest(prompt="Once upon a time", max_tokens=900, ignore_eos=True)
        handler = asyncio.ensure_future(serving.create(request, NeverDisconnects()))
        deadline = time.monotonic() + 20
        while (await async_llm.get_stats()).num_running == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        stats = await wait_until_idle(async_llm, timeout=5)  # well before 900 tokens
        assert stats.kv_cache_usage == 0.0

    asyncio.run(main())


def test_offline_chat_takes_content_parts(offline_llm):
    parts = [{"role": "user", "content": [{"type": "text", "text": "The capital"}, {"type": "text", "text": "of"}]}]
    plain = [{"role": "user", "content": "The capital\nof"}]
    got = offline_llm.chat(parts, GREEDY, use_tqdm=False)[0]
    assert got.prompt_token_ids == offline_llm.chat(plain, GREEDY, use_tqdm=False)[0].prompt_token_ids
    with pytest.raises(ValueError, match="message content must be a string or a list of"):
        offline_llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], GREEDY)
