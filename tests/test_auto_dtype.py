"""``dtype="auto"`` picks the fast compute dtype for the CPU it runs on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from folo_core import platform
from folo_core.config import EngineConfig, resolve_engine_config

AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_bf16", "amx_tile", "avx512_fp16"}


def resolved_dtype(monkeypatch, flags: frozenset[str], checkpoint_dtype: str, **kwargs) -> str:
    monkeypatch.setattr(platform, "cpu_flags", lambda: flags)
    hf_config = SimpleNamespace(dtype=checkpoint_dtype, max_position_embeddings=128)
    config = EngineConfig.from_kwargs(model="/m", device="cpu", **kwargs)
    return resolve_engine_config(config, hf_config).model.dtype


@pytest.mark.parametrize("flags, checkpoint, expected", [
    (AVX2_ONLY, "bfloat16", "float32"),
    (AVX2_ONLY, "float16", "float32"),
    (AVX2_ONLY, "float32", "float32"),
    (AVX512_BF16, "bfloat16", "bfloat16"),
    (AVX512_BF16, "float16", "float32"),  # bf16 hardware does not make fp16 fast
    (AVX512_BF16, "float32", "float32"),
    (SAPPHIRE_RAPIDS, "float16", "float16"),
    (SAPPHIRE_RAPIDS, "bfloat16", "bfloat16"),
])
def test_auto_dtype_on_simulated_cpus(monkeypatch, flags, checkpoint, expected):
    assert resolved_dtype(monkeypatch, flags, checkpoint) == expected


def test_explicit_dtype_wins(monkeypatch):
    assert resolved_dtype(monkeypatch, AVX2_ONLY, "bfloat16", dtype="bfloat16") == "bfloat16"
    assert resolved_dtype(monkeypatch, AVX512_BF16, "bfloat16", dtype="float32") == "float32"


def test_auto_dtype_logs_why(monkeypatch, caplog):
    import logging

    logging.getLogger("folo").propagate = True
    with caplog.at_level(logging.INFO, logger="folo"):
        resolved_dtype(monkeypatch, AVX2_ONLY, "bfloat16")
    assert any("dtype auto -> float32" in r.message and "no native" in r.message for r in caplog.records)


def test_cuda_keeps_the_checkpoint_dtype(monkeypatch):
    monkeypatch.setattr(platform, "cpu_flags", lambda: AVX2_ONLY)
    assert platform.resolve_auto_dtype(torch.bfloat16, "cuda")[0] == torch.bfloat16


def test_real_cpu_flags_are_read():
    """On Linux the flags come from /proc/cpuinfo; every x86-64 CPU there has sse2."""
    import os

    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = platform.cpu_flags()
    assert "sse2" in flags or "fp" in flags or "asimd" in flags
