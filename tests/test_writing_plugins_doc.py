"""The plugin modules printed in docs/writing-plugins.md register and work as printed."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from folo_core import LLM, SamplingParams
from folo_core.plugins import FoloPluginManager, PluginInfo
from helpers import build_tiny_model, hf_greedy, random_prompts

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"
# A python block whose first line names a package's __init__.py is a complete plugin module.
PLUGIN_BLOCK = re.compile(r"```python\n# (\w+)/__init__\.py\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def doc_plugins(tmp_path_factory) -> dict[str, ModuleType]:
    root = tmp_path_factory.mktemp("doc-plugins")
    for package, source in PLUGIN_BLOCK.findall(DOC.read_text()):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(source)
    sys.path.insert(0, str(root))
    try:
        return {p.name: importlib.import_module(p.name) for p in sorted(root.iterdir())}
    finally:
        sys.path.remove(str(root))


@pytest.fixture(scope="module")
def manager(doc_plugins) -> FoloPluginManager:
    manager = FoloPluginManager()
    manager.load_entry_points()
    for name, module in doc_plugins.items():
        info = manager.register(module, PluginInfo(name))
        assert info.error is None, f"{name}: {info.error}"
    return manager


@pytest.fixture
def use_manager(manager, monkeypatch):
    """``LLM(...)`` picks plugins from ``manager`` (with the doc's plugins) instead of the global one."""
    monkeypatch.setattr("folo_core.engine.llm_engine.get_plugin_manager", lambda: manager)


def test_doc_shows_a_plugin_for_every_kind_but_attention(manager, doc_plugins):
    kinds = {kind for name in doc_plugins for kind in manager.plugins[name].registered}
    assert kinds == {"sampler", "scheduler", "kv_cache_manager", "quantizer", "model", "structured_output_backend",
                     "tool_parser"}


def test_doc_tool_parser_reads_its_calls(manager):
    parser = manager.registry("tool_parser").get("fn_tag").impl(None)
    extracted = parser.extract_tool_calls('One moment. <fn name="get_weather">{"city": "Paris"}</fn>')
    assert extracted.content == "One moment."
    assert [(c.name, c.arguments) for c in extracted.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert not parser.extract_tool_calls('<fn name="x">{oops</fn>').tools_called
    assert parser.may_start_call("Sure <fn") == 5


@pytest.mark.usefixtures("use_manager")
def test_doc_structured_output_backend_takes_regexes_and_auto_routes_the_rest(tiny_chat_model_dir):
    from folo_core import StructuredOutputsParams

    llm = LLM(str(tiny_chat_model_dir), max_model_len=128)
    so_manager = llm.llm_engine.engine_core.structured_output_manager
    assert so_manager.select_backend(StructuredOutputsParams(regex="[a-z]{2}")) == "regex_only"
    assert so_manager.select_backend(StructuredOutputsParams(choice=["x", "y"])) == "guidance"
    out = llm.generate("x", SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(regex="[a-z]{2}")),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.text) == 2 and out.text.isalpha() and out.finish_reason == "stop"


@pytest.mark.usefixtures("use_manager")
def test_doc_sampler_scheduler_kv_manager_and_model_generate_hf_greedy(tmp_path):
    model = build_tiny_model("llama", tmp_path, architectures=["MinistralForCausalLM"], model_type="ministral",
                             head_dim=16, sliding_window=8,
                             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    llm = LLM(str(model), sampler="greedy_only", scheduler="shortest_first", kv_cache_manager="headroom",
              dtype="float32", skip_tokenizer_init=True, num_gpu_blocks_override=12, max_num_batched_tokens=24)
    selected = llm.llm_engine.engine_core.selected
    assert (selected.model, selected.sampler, selected.scheduler, selected.kv_cache_manager) == (
        "MinistralForCausalLM", "greedy_only", "shortest_first", "headroom")
    prompts = random_prompts(4, 512, seed=3, min_len=5, max_len=40)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(model, prompts, 6)


@pytest.mark.usefixtures("use_manager")
def test_doc_quantizer_keeps_int8_weights_and_generates_hf_greedy(tiny_model_dir):
    model = tiny_model_dir("qwen2")
    llm = LLM(str(model), quantization="int8_weight_only", dtype="float32", skip_tokenizer_init=True,
              num_gpu_blocks_override=16)
    layers = [m for m in llm.llm_engine.engine_core.executor.model_runner.model.modules() if hasattr(m, "qweight")]
    assert layers and all(m.qweight.dtype == torch.int8 and not hasattr(m, "weight") for m in layers)
    prompts = random_prompts(2, 512, seed=5, min_len=5, max_len=20)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(model, prompts, 4)
