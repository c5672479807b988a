"""Data-parallel replicas as Ray actors (``data_parallel_backend="ray"``) on a local 2-CPU Ray cluster."""

from __future__ import annotations

import os

import pytest

from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.engine.ray_core import RayEngineCore
from test_data_parallel import GREEDY, OPTIONS, PROMPTS, qwen2, reference, run  # noqa: F401 (fixtures)

ray = pytest.importorskip("ray")  # scripts/setup.sh installs the [ray] extra, so CI runs these


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_ray_replicas_match_one_engine_and_one_lost_fails_only_its_requests(ray_cluster, qwen2, reference):
    engine = LLMEngine(EngineConfig.from_kwargs(model=qwen2, data_parallel_size=2, data_parallel_backend="ray",
                                                **OPTIONS))
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
    assert not ray.util.placement_group_table() or all(
        g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())
