"""The executor seam: the engine core reaches the model only through the selected executor."""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.hookspecs import hookimpl
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.registry import PluginSelectionError
from folo_plugins.executors.uniproc import UniProcExecutor


class CountingExecutor(UniProcExecutor):
    """A third-party executor: the built-in one, counting the steps it runs."""

    steps = 0
    shut_down = False

    def execute_model(self, scheduler_output):
        CountingExecutor.steps += 1
        return super().execute_model(scheduler_output)

    def shutdown(self) -> None:
        CountingExecutor.shut_down = True


class _Plugin:
    @staticmethod
    @hookimpl
    def register_executors(register):
        register("counting", CountingExecutor)


def test_auto_picks_uni_for_one_process(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True)
    assert llm.llm_engine.engine_core.selected.executor == "uni"
    assert isinstance(llm.llm_engine.engine_core.executor, UniProcExecutor)


def test_a_third_party_executor_is_selected_by_name_and_runs_every_step(tiny_model_dir):
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(_Plugin, PluginInfo("counting_executor"))
    engine = LLMEngine(EngineConfig.from_kwargs(model=str(tiny_model_dir("qwen2")), skip_tokenizer_init=True,
                                                distributed_executor_backend="counting"), plugins=manager)
    assert engine.engine_core.selected.executor == "counting"
    engine.add_request("a", {"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=5, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert CountingExecutor.steps == 5
    engine.engine_core.shutdown()
    assert CountingExecutor.shut_down


def test_unknown_executor_is_refused_by_name(tiny_model_dir):
    with pytest.raises(PluginSelectionError, match="unknown executor 'ray9'.*uni"):
        LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, distributed_executor_backend="ray9")


def _install_plugin_distribution(root, monkeypatch) -> None:
    """A third-party distribution on sys.path: a module and a dist-info whose entry point is in
    the ``folo`` group, as ``pip install`` would leave them."""
    (root / "folo_counting_executor.py").write_text(
        "from folo_core.hookspecs import hookimpl\n"
        "from folo_plugins.executors.uniproc import UniProcExecutor\n\n\n"
        "class EntryPointExecutor(UniProcExecutor):\n"
        "    pass\n\n\n"
        "@hookimpl\n"
        "def register_executors(register):\n"
        "    register('entry_point_counting', EntryPointExecutor)\n")
    dist_info = root / "folo_counting_executor-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: folo-counting-executor\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[folo]\ncounting_executor = folo_counting_executor\n")
    monkeypatch.syspath_prepend(str(root))


def test_an_executor_from_an_entry_point_is_selected_by_name_here_and_in_core_processes(
        tiny_model_dir, tmp_path, monkeypatch):
    _install_plugin_distribution(tmp_path, monkeypatch)
    manager = FoloPluginManager()
    manager.load_entry_points()
    assert manager.plugins["counting_executor"].distribution == "folo-counting-executor"
    options = dict(model=str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, enforce_eager=True,
                   distributed_executor_backend="entry_point_counting")
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    prompt = {"prompt_token_ids": [1, 2, 3]}
    here = LLMEngine(EngineConfig.from_kwargs(**options), plugins=manager)
    assert here.engine_core.selected.executor == "entry_point_counting"
    # Two replicas load the same entry point in their own processes.
    replicas = LLMEngine(EngineConfig.from_kwargs(data_parallel_size=2, **options), plugins=manager)
    try:
        assert replicas.engine_core.selected.executor == "entry_point_counting"
        for engine in (here, replicas):
            engine.add_request("r", prompt, params)
            while engine.has_unfinished_requests():
                outputs = engine.step()
            assert len(outputs[0].outputs[0].token_ids) == 4
    finally:
        replicas.shutdown()
        here.shutdown()


def test_ray_eligibility_is_decided_without_importing_ray(monkeypatch):
    """``auto`` asks every executor at each engine start; Ray's answer must not cost Ray's import
    (about 0.6 s), and a missing Ray says how to install it."""
    import subprocess
    import sys

    probe = ("import sys; from folo_plugins.executors.ray_executor import RayDistributedExecutor as R; "
             "R.check_eligibility(None); print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    import importlib.util

    from folo_plugins.executors.ray_executor import RayDistributedExecutor

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert RayDistributedExecutor.check_eligibility(None) == ["Ray is not installed (pip install 'folovllm[ray]')"]
