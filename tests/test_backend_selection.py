"""Choosing an attention backend: ``auto``, by name, and what ``folo plugins --explain`` says."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from folo_core import LLM
from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.entrypoints.plugins_report import explain_report
from folo_core.hookspecs import hookimpl
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.registry import PluginSelectionError, SelectionContext
from folo_plugins.paged.attention import PagedSDPABackend

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without CUDA")


@no_cuda
def test_auto_picks_paged_here(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("qwen2")), dtype="float32", skip_tokenizer_init=True, num_gpu_blocks_override=8)
    assert llm.llm_engine.engine_core.selected.attention_backend == "paged"


@no_cuda
@pytest.mark.parametrize("block_size, block_reason", [(16, True), (256, False)])
def test_flash_attn_by_name_says_what_is_missing(tiny_model_dir, block_size, block_reason):
    with pytest.raises(PluginSelectionError) as err:
        LLM(str(tiny_model_dir("qwen2")), attention_backend="flash_attn", block_size=block_size,
            skip_tokenizer_init=True)
    message = str(err.value)
    assert "attention_backend 'flash_attn' cannot be used here" in message
    assert "no CUDA device" in message and "flash_attn package" in message
    assert ("block size 16 is not a multiple of 256" in message) is block_reason


def test_unknown_backend_lists_the_known_ones(tiny_model_dir):
    with pytest.raises(PluginSelectionError, match=r"unknown attention_backend 'nope'; known: .*flash_attn.*naive.*paged"):
        LLM(str(tiny_model_dir("qwen2")), attention_backend="nope", skip_tokenizer_init=True)


class _Head128Only(PagedSDPABackend):
    name = "head128_only"
    capabilities = dataclasses.replace(PagedSDPABackend.capabilities, head_sizes=(128,))


class _Head128Plugin:
    @staticmethod
    @hookimpl
    def register_attention_backends(register):
        register(_Head128Only.name, _Head128Only, priority=1000)


@pytest.fixture
def manager_with_head128_backend() -> FoloPluginManager:
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(_Head128Plugin(), PluginInfo("head128"))
    return manager


def test_auto_never_picks_a_backend_excluding_the_head_size(manager_with_head128_backend, tiny_model_dir):
    registry = manager_with_head128_backend.registry("attention_backend")
    ctx = SelectionContext(device="cpu", dtype=torch.float32, head_size=32, block_size=16)
    assert registry.select("auto", ctx).name == "paged"
    assert dict((e.name, r) for e, r in registry.explain(ctx))["head128_only"] == ["head size 32 not in [128]"]
    # The same backend is picked where the head size fits, so the test above could fail.
    assert registry.select("auto", dataclasses.replace(ctx, head_size=128)).name == "head128_only"

    config = EngineConfig.from_kwargs(model=str(tiny_model_dir("qwen3")), dtype="float32",  # head size 32
                                      skip_tokenizer_init=True, num_gpu_blocks_override=8)
    engine = LLMEngine(config, plugins=manager_with_head128_backend)
    assert engine.engine_core.selected.attention_backend == "paged"


@no_cuda
def test_explain_reports_the_pick_and_every_reason(tiny_model_dir):
    config = EngineConfig.from_kwargs(model=str(tiny_model_dir("qwen2")), block_size=256)
    rows = {row["name"]: row for row in explain_report(config)["attention_backend"]}
    assert [name for name, row in rows.items() if row["selected"]] == ["paged"]
    assert rows["paged"]["why"] == "picked: highest-priority eligible"
    assert rows["naive"]["why"] == "eligible, but 'paged' ranks higher"
    flash = rows["flash_attn"]["reasons"]
    assert any("no CUDA device" in r for r in flash) and any("flash_attn package" in r for r in flash)
    assert not any("block size" in r for r in flash)  # 256 fits


@no_cuda
def test_folo_plugins_explain_text(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "folo_core.entrypoints.cli", "plugins", "--explain",
                             "--model", str(tiny_model_dir("qwen2"))], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("\nattention_backend:\n")[1].split("\n\n")[0]
    assert "-> paged (priority 50, plugin paged): picked: highest-priority eligible" in section
    assert "flash_attn (priority 100, plugin flash_attn): not eligible: no CUDA device" in section
    assert "block size 16 is not a multiple of 256" in section
