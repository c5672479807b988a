"""Data parallelism: ``data_parallel_size`` engine cores, each a process with its own scheduler
and KV cache, behind one front end (``MPClient``); also one core in a process of its own."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from folo_core.config import EngineConfig
from folo_core.engine.core_client import MPClient
from folo_core.engine.errors import EngineDeadError
from folo_core.engine.llm import LLM
from folo_core.engine.llm_engine import LLMEngine
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.sampling_params import SamplingParams
from helpers import random_prompts
from test_server import MODEL, server_process

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
OPTIONS = dict(skip_tokenizer_init=True, dtype="float32", enforce_eager=True)


@pytest.fixture(scope="module")
def qwen2(tiny_model_dir):
    return str(tiny_model_dir("qwen2"))


@pytest.fixture(scope="module")
def reference(qwen2):
    """Greedy tokens of one in-process engine for PROMPTS."""
    llm = LLM(qwen2, **OPTIONS)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


PROMPTS = [{"prompt_token_ids": p} for p in random_prompts(8, 500, seed=3, min_len=4, max_len=30)]


@pytest.fixture(scope="module")
def dp_llm(qwen2):
    llm = LLM(qwen2, data_parallel_size=2, max_model_len=64, **OPTIONS)
    yield llm
    llm.llm_engine.shutdown()


def run(engine: LLMEngine, prompts: list, params: SamplingParams, prefix: str) -> dict[str, object]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{prefix}{i}", prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    return finished


def test_two_replicas_give_one_engines_greedy_tokens_and_both_serve(dp_llm, reference):
    dp_engine = dp_llm.llm_engine
    client = dp_engine.engine_core
    assert isinstance(client, MPClient) and len(client.replicas) == 2
    assert len({r.proc.info.pid for r in client.replicas} | {os.getpid()}) == 3  # two processes of their own
    before = [r.num_routed for r in client.replicas]
    out = run(dp_engine, PROMPTS, GREEDY, "same-")
    assert [out[f"same-{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == reference
    routed = [r.num_routed - b for r, b in zip(client.replicas, before)]
    assert sum(routed) == len(PROMPTS) and min(routed) >= 3, routed  # balanced by outstanding tokens
    stats = dp_engine.get_stats()  # merged: both replicas' blocks, nothing left running
    assert stats.num_blocks == sum(r.proc.stats.num_blocks for r in client.replicas)
    assert stats.num_running == stats.num_waiting == 0 and stats.prefix_cache.requests >= len(PROMPTS)


def test_llm_with_two_replicas_matches_and_checks_requests_in_the_replica(dp_llm, reference):
    llm = dp_llm
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == reference
    with pytest.raises(ValueError, match="max_model_len"):  # the front end's check, before routing
        llm.generate({"prompt_token_ids": list(range(80))}, GREEDY, use_tqdm=False)
    n2 = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=5, n=2, ignore_eos=True),
                      use_tqdm=False)[0]
    assert [c.token_ids for c in n2.outputs] == [reference[0][:5]] * 2
    assert not llm.llm_engine.has_unfinished_requests()


def test_prefix_routing_sends_a_shared_first_block_to_one_replica(qwen2):
    engine = LLMEngine(EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, data_parallel_routing="prefix",
                                                block_size=16, **OPTIONS))
    try:
        client = engine.engine_core
        shared = list(range(10, 26))  # one full block
        prompts = [{"prompt_token_ids": shared + [100 + i]} for i in range(6)]
        run(engine, prompts, SamplingParams(max_tokens=2, ignore_eos=True), "p")
        assert sorted(r.num_routed for r in client.replicas) == [0, 6]
        hits = engine.get_stats().prefix_cache.hits
        assert hits >= 5 * 16  # every request after the first found the block cached
    finally:
        engine.shutdown()


def test_a_dead_replica_fails_only_its_requests_and_the_rest_serve(qwen2, reference):
    engine = LLMEngine(EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, **OPTIONS))
    try:
        client = engine.engine_core
        long = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"r{i}", prompt, long)
        victim = client.replicas[0]
        doomed = set(victim.outstanding)
        assert doomed
        engine.step()
        os.kill(victim.proc.info.pid, signal.SIGKILL)
        victim.proc.process.join(10)
        finished = {}
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output
        assert set(finished) == {f"r{i}" for i in range(len(PROMPTS))}
        for i in range(len(PROMPTS)):
            completion = finished[f"r{i}"].outputs[0]
            if f"r{i}" in doomed:
                assert completion.finish_reason == "error"
                assert "data-parallel replica 0 died (exit code -9)" in completion.error
            else:
                assert completion.finish_reason == "length" and completion.token_ids == reference[i]
        health = engine.health()
        assert health.degraded and health.num_alive == 1 and "replica 0 died" in health.errors[0]
        after = run(engine, PROMPTS[:2], GREEDY, "after-")  # the survivor takes the new requests
        assert [after[f"after-{i}"].outputs[0].token_ids for i in range(2)] == reference[:2]
        os.kill(client.replicas[1].proc.info.pid, signal.SIGKILL)
        client.replicas[1].proc.process.join(10)
        with pytest.raises(EngineDeadError, match="every engine core died"):
            for _ in range(2):  # the first may go out before the loss is seen
                engine.add_request("late", PROMPTS[0], GREEDY)
                engine.step()
    finally:
        engine.shutdown()


def test_a_startup_error_in_a_core_process_raises_in_the_caller(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", '
                                          '"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, '
                                          '"num_key_value_heads": 2, "intermediate_size": 8, "vocab_size": 32}')
    with pytest.raises(Exception, match="safetensors"):  # raised in the core process, re-raised here
        LLMEngine(EngineConfig.from_kwargs(model=str(tmp_path), **OPTIONS), multiprocess_mode=True)


def test_a_hand_built_plugin_manager_cannot_cross_processes(qwen2):
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(object(), PluginInfo("mine"))
    with pytest.raises(ValueError, match="entry-point group"):
        LLMEngine(EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, **OPTIONS), plugins=manager)


def test_one_core_process_matches_in_process(qwen2, reference):
    engine = LLMEngine(EngineConfig.from_kwargs(model=qwen2, **OPTIONS), multiprocess_mode=True)
    try:
        assert isinstance(engine.engine_core, MPClient) and engine.engine_core.selected.executor == "uni"
        out = run(engine, PROMPTS, GREEDY, "m")
        assert [out[f"m{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == reference
        with pytest.raises(ValueError, match="already in use"):
            engine.engine_core.add_request("m0", [1, 2], GREEDY)
            engine.engine_core.add_request("m0", [1, 2], GREEDY)
    finally:
        engine.shutdown()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _replica_pids(server_pid: int) -> list[int]:
    """The server's engine-core processes: the children of its multiprocessing fork server."""
    servers = [c for c in _children(server_pid) if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return [pid for fork_server in servers for pid in _children(fork_server)]


def test_serve_with_two_replicas_answers_the_openai_client_and_survives_one(tiny_chat_model_dir, tmp_path):
    prompts = [f"Count to {i}:" for i in range(6)]
    offline = LLM(str(tiny_chat_model_dir), dtype="float32", enforce_eager=True, max_model_len=1024)
    expected = [o.outputs[0].text for o in offline.generate(prompts, SamplingParams(temperature=0, max_tokens=8,
                                                                                  ignore_eos=True), use_tqdm=False)]
    with server_process(tiny_chat_model_dir, tmp_path / "server.log", "--data-parallel-size", "2",
                        "--dtype", "float32", "--enforce-eager") as (proc, base_url):
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)

        def complete(prompt: str) -> str:
            return client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                             extra_body={"ignore_eos": True}).choices[0].text

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(complete, prompts)) == expected
        pids = _replica_pids(proc.pid)
        assert len(pids) == 2, pids
        assert httpx.get(f"{base_url}/health").status_code == 200
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{base_url}/health")).content == b"":
            assert time.monotonic() < deadline, "the lost replica never showed in /health"
            time.sleep(0.1)
        body = health.json()
        assert health.status_code == 200 and body["status"] == "degraded", body
        assert body["engine_cores"] == 2 and body["engine_cores_alive"] == 1 and "died" in body["errors"][0]
        with ThreadPoolExecutor(6) as pool:  # the survivor serves everything now
            assert list(pool.map(complete, prompts)) == expected
