"""Folo on a local 2-CPU Ray cluster: data-parallel replicas as actors (``data_parallel_backend="ray"``)
and tensor-parallel ranks as actors (the ``ray`` executor)."""

from __future__ import annotations

import os

import pytest

from folo_core import LLM, SamplingParams
from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.engine.ray_core import RayEngineCore
from helpers import random_prompts
from test_data_parallel import GREEDY, OPTIONS, PROMPTS, qwen2, reference, run  # noqa: F401 (fixtures)
from test_tensor_parallel import assert_same_tokens_and_logprobs

ray = pytest.importorskip("ray")  # scripts/setup.sh installs the [ray] extra, so CI runs these


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_ray_replicas_match_one_engine_and_one_lost_fails_only_its_requests(ray_cluster, qwen2, reference):
    config = EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, distributed_executor_backend="ray",
                                      **OPTIONS)
    assert config.parallel.data_parallel_backend == "ray"  # "auto" follows the executor backend
    engine = LLMEngine(config)
    try:
        client = engine.engine_core
        assert all(isinstance(r.proc, RayEngineCore) for r in client.replicas)
        assert len({r.proc.info.pid for r in client.replicas} | {os.getpid()}) == 3
        out = run(engine, PROMPTS, GREEDY, "a")
        assert [out[f"a{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == reference
        assert min(r.num_routed for r in client.replicas) >= 3  # both served
        assert engine.get_stats().num_blocks == sum(r.proc.stats.num_blocks for r in client.replicas)

        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"b{i}", prompt, GREEDY)
        doomed = set(client.replicas[1].outstanding)
        assert doomed
        engine.step()
        ray.kill(client.replicas[1].proc.actor)
        finished = {}
        while engine.has_unfinished_requests():
            finished.update({o.request_id: o for o in engine.step() if o.finished})
        for i in range(len(PROMPTS)):
            completion = finished[f"b{i}"].outputs[0]
            if f"b{i}" in doomed:
                assert completion.finish_reason == "error" and "data-parallel replica 1 died" in completion.error
            else:
                assert completion.token_ids == reference[i]
        assert engine.health().num_alive == 1
    finally:
        engine.shutdown()
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_ray_executor_tp2_matches_one_rank(ray_cluster, tiny_model_dir):
    path = str(tiny_model_dir("qwen3"))  # one KV head, replicated on both ranks
    prompts = [{"prompt_token_ids": p} for p in random_prompts(4, 512, seed=21, min_len=3, max_len=40)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=3)
    one = LLM(path, **OPTIONS).generate(prompts, params, use_tqdm=False)
    tp = LLM(path, tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    try:
        assert tp.llm_engine.engine_core.selected.executor == "ray"
        assert_same_tokens_and_logprobs(one, tp.generate(prompts, params, use_tqdm=False))
    finally:
        tp.llm_engine.shutdown()
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_a_lost_rank_fails_the_step_not_the_engine(ray_cluster, qwen2):
    llm = LLM(qwen2, tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    try:
        ray.kill(llm.llm_engine.engine_core.executor.actors[1])
        with pytest.raises(Exception, match="rank 1 is lost"):
            llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
        assert not llm.llm_engine.has_unfinished_requests()
    finally:
        llm.llm_engine.shutdown()


def test_ray_replicas_with_several_ranks_each_are_refused_with_the_reason(qwen2):
    with pytest.raises(ValueError, match="data_parallel_backend='mp'"):
        EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, tensor_parallel_size=2,
                                 data_parallel_backend="ray")
    config = EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, tensor_parallel_size=2)
    assert config.parallel.data_parallel_backend == "mp"
