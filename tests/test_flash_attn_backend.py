"""The flash-attn backend: its own code on CPU through the pure-torch reference kernels,
its import guard and requirements, and (marked ``gpu``) the real kernels on CUDA."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch

import flash_attn_reference
from folo_core import LLM, SamplingParams
from folo_core.hookspecs import hookimpl
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.registry import SelectionContext
from folo_core.testing import AttentionBackendConformance
from folo_core.worker.flat_batch import build_flat_batch
from folo_plugins.flash_attn import kernels
from folo_plugins.flash_attn.attention import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)
from helpers import hf_greedy, random_prompts


class CPUFlashAttentionBackend(FlashAttentionBackend):
    """The real backend with its CUDA-only declaration lifted, for the reference kernels."""

    capabilities = dataclasses.replace(FlashAttentionBackend.capabilities, devices=("cpu",),
                                       dtypes=(torch.float32, torch.bfloat16))

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return []

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        """Judged against the reference kernels (which take ``softcap``), not an installed flash_attn."""
        with mock.patch.object(kernels, "flash_attn_ops", flash_attn_reference):
            return super().check_eligibility(ctx)


@pytest.fixture
def reference_kernels(monkeypatch):
    monkeypatch.setattr(kernels, "flash_attn_ops", flash_attn_reference)
    return flash_attn_reference


@pytest.mark.usefixtures("reference_kernels")
class TestFlashAttnOnReferenceKernels(AttentionBackendConformance):
    backend = CPUFlashAttentionBackend


# -- what the backend hands the kernels ------------------------------------------------


class _RecordingKernels:
    """The reference kernels, recording each call's keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def flash_attn_varlen_func(self, *args, **kwargs):
        self.calls.append(("varlen", kwargs))
        return flash_attn_reference.flash_attn_varlen_func(*args, **kwargs)

    def flash_attn_with_kvcache(self, *args, **kwargs):
        self.calls.append(("kvcache", kwargs))
        return flash_attn_reference.flash_attn_with_kvcache(*args, **kwargs)


def _run_step(computed: list[int], scheduled: list[int], monkeypatch) -> list[tuple[str, dict]]:
    recorder = _RecordingKernels()
    monkeypatch.setattr(kernels, "flash_attn_ops", recorder)
    block_size, kv_heads, heads, head_size = 256, 2, 4, 16
    table = np.arange(3 * len(computed), dtype=np.int32).reshape(len(computed), 3)
    flat = build_flat_batch(np.array(computed), np.array(scheduled), table, np.arange(len(computed)),
                            block_size, torch.device("cpu"))
    metadata = FlashAttentionMetadataBuilder(FlashAttentionBackend, torch.device("cpu")).build(flat.attn_metadata)
    impl = FlashAttentionImpl(heads, head_size, 0.125, kv_heads)
    num_tokens = sum(scheduled)
    kv_cache = torch.zeros(FlashAttentionBackend.get_kv_cache_shape(table.size, block_size, kv_heads, head_size))
    impl.forward(torch.randn(num_tokens, heads, head_size), torch.randn(num_tokens, kv_heads, head_size),
                 torch.randn(num_tokens, kv_heads, head_size), kv_cache, metadata)
    return recorder.calls


def test_decode_only_step_calls_flash_attn_with_kvcache(monkeypatch):
    [(kernel, kwargs)] = _run_step([300, 7, 511], [1, 1, 1], monkeypatch)
    assert kernel == "kvcache"
    seqlens = kwargs["cache_seqlens"]
    assert isinstance(seqlens, torch.Tensor) and seqlens.dtype == torch.int32  # an int breaks paged upstream
    assert seqlens.tolist() == [301, 8, 512]
    assert kwargs["block_table"].dtype == torch.int32
    assert (kwargs["softmax_scale"], kwargs["causal"]) == (0.125, True)


def test_mixed_step_calls_varlen_with_cumulative_context_lengths(monkeypatch):
    [(kernel, kwargs)] = _run_step([300, 0, 40], [1, 20, 5], monkeypatch)
    assert kernel == "varlen"
    assert kwargs["cu_seqlens_q"].tolist() == [0, 1, 21, 26]
    assert kwargs["cu_seqlens_k"].tolist() == [0, 301, 321, 366]
    assert kwargs["cu_seqlens_k"].dtype == torch.int32
    assert (kwargs["max_seqlen_q"], kwargs["max_seqlen_k"]) == (20, 301)
    assert kwargs["block_table"].tolist() == [[0, 1], [3, 4], [6, 7]]
    assert (kwargs["softmax_scale"], kwargs["causal"]) == (0.125, True)


# -- requirements and the import guard -------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA reports")
def test_requirements_name_what_this_machine_lacks():
    missing = FlashAttentionBackend.missing_requirements()
    assert any("no CUDA device" in m for m in missing)
    if importlib.util.find_spec("flash_attn") is None:
        assert any("flash_attn package is not installed" in m and "--no-build-isolation" in m for m in missing)


@pytest.fixture
def fake_flash_attn(tmp_path, monkeypatch):
    """Install ``flash_attn/__init__.py`` with the given source on sys.path, in place of any real one."""
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(kernels, "flash_attn_ops", None)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(source: str) -> None:
        (tmp_path / "flash_attn").mkdir()
        (tmp_path / "flash_attn" / "__init__.py").write_text(textwrap.dedent(source))

    yield install
    sys.modules.pop("flash_attn", None)


@pytest.mark.parametrize("source, message", [
    ("raise OSError('libcudart.so.12: cannot open shared object file')",
     "failed to import (OSError: libcudart.so.12"),
    ("import flash_attn_2_cuda", "failed to import (ModuleNotFoundError: No module named 'flash_attn_2_cuda'"),
    ("raise RuntimeError('CUDA driver version is insufficient')", "failed to import (RuntimeError: CUDA driver"),
    ("__version__ = '2.0.0'\ndef flash_attn_varlen_func(q, k, v): ...", "flash_attn 2.0.0 lacks flash_attn_with_kvcache"),
    ("""
     __version__ = '2.5.0'
     def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False): ...
     def flash_attn_with_kvcache(q, k_cache, v_cache, block_table=None): ...
     """, "flash_attn 2.5.0 has no paged KV support in flash_attn_varlen_func"),
])
def test_broken_or_old_flash_attn_is_reported_not_raised(fake_flash_attn, source, message):
    fake_flash_attn(source)
    assert message in kernels.kernels_missing()
    assert any(message in m for m in FlashAttentionBackend.missing_requirements())
    with pytest.raises(RuntimeError, match="flash_attn"):
        kernels.get_flash_attn_ops()


def test_complete_flash_attn_is_accepted(fake_flash_attn):
    fake_flash_attn("""
        __version__ = '2.8.3'
        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   block_table=None): ...
        def flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, block_table=None): ...
    """)
    assert kernels.kernels_missing() is None
    assert kernels.get_flash_attn_ops().__version__ == "2.8.3"


def test_flash_attn_without_softcap_is_refused_only_for_soft_capped_models(fake_flash_attn, monkeypatch):
    fake_flash_attn("""
        __version__ = '2.5.8'
        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   window_size=(-1, -1), block_table=None): ...
        def flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, block_table=None): ...
    """)
    monkeypatch.setattr(FlashAttentionBackend, "missing_requirements", classmethod(lambda cls: []))
    ctx = SelectionContext(device="cuda", dtype=torch.bfloat16, head_size=64, block_size=256, options={})
    assert FlashAttentionBackend.check_eligibility(ctx) == []
    capped = dataclasses.replace(ctx, options={"logits_soft_cap": True})
    assert any("no softcap argument" in r for r in FlashAttentionBackend.check_eligibility(capped))
    assert kernels.kernels_take_softcap() is False


# -- inside the engine -------------------------------------------------------------------


class _CPUFlashPlugin:
    @staticmethod
    @hookimpl
    def register_attention_backends(register):
        register("flash_attn_cpu", CPUFlashAttentionBackend)


def test_engine_with_flash_backend_on_reference_kernels_matches_hf(tiny_model_dir, reference_kernels,
                                                                   monkeypatch):
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(_CPUFlashPlugin(), PluginInfo("flash_attn_cpu"))
    monkeypatch.setattr("folo_core.engine.llm_engine.get_plugin_manager", lambda: manager)
    model = tiny_model_dir("qwen3")  # head size 32, GQA 4
    llm = LLM(str(model), attention_backend="flash_attn_cpu", dtype="float32", block_size=256,
              num_gpu_blocks_override=8, skip_tokenizer_init=True,
              max_num_batched_tokens=32)  # the 45-token prompt arrives in two chunks
    assert llm.llm_engine.engine_core.selected.attention_backend == "flash_attn_cpu"
    prompts = [[1, *range(44)], *random_prompts(2, 512, seed=4, max_len=30)]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(model, prompts, 6)


# -- the real kernels (run only where CUDA and flash-attn are present) ----------------------


@pytest.mark.gpu
class TestFlashAttnOnCUDA(AttentionBackendConformance):
    """Skipped, each case with the reason, wherever the backend is not eligible."""

    backend = FlashAttentionBackend
    device = "cuda"
    dtypes = (torch.bfloat16, torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(bool(FlashAttentionBackend.missing_requirements()),
                    reason="; ".join(FlashAttentionBackend.missing_requirements()))
def test_reference_kernels_agree_with_real_flash_attn():
    import flash_attn

    torch.manual_seed(0)
    lens_q, lens_k = [300, 1, 17], [300, 600, 530]
    k_cache = torch.randn(8, 256, 2, 64, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.randn_like(k_cache)
    block_table = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0]], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens_q), 8, 64, dtype=torch.bfloat16, device="cuda")
    cu_q = torch.tensor([0, 300, 301, 318], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 300, 900, 1430], dtype=torch.int32, device="cuda")
    args = (q, k_cache, v_cache, cu_q, cu_k, 300, 600)
    kwargs = dict(softmax_scale=0.1, causal=True, block_table=block_table)
    torch.testing.assert_close(flash_attn.flash_attn_varlen_func(*args, **kwargs),
                               flash_attn_reference.flash_attn_varlen_func(*args, **kwargs), atol=2e-2, rtol=2e-2)
