"""Folo's bf16 linear kernel for CPUs with AVX512-BF16 (``csrc/bf16_linear.cpp``).

oneDNN's prepacked bf16 linear streams weights at about 17 GB/s at decode batch
sizes on a 2-core EPYC, where a plain read loop reaches about 25 GB/s; this
kernel keeps the whole K of a row block in registers over a weight packed for
``vdpbf16ps`` and reaches the read loop's speed (``benchmarks/linear_kernels.py``
has the sweep). Where the CPU also has AMX-BF16, blocks of 4 rows or more run on the
tile unit over the same packed weight (1.8-3x faster than oneDNN's AMX path from 8
rows up on a 2-core Xeon). It is used only where the CPU has the instruction and
a C++ compiler is present; elsewhere oneDNN stays.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from folo_core.kernels.cpp_build import load_cpp_ops
from folo_core.platform import cpu_flags

_SOURCE = Path(__file__).with_name("csrc") / "bf16_linear.cpp"


@functools.cache
def available() -> bool:
    """The CPU has AVX512-BF16 and the kernel library builds and loads."""
    if "avx512_bf16" not in cpu_flags() or not load_cpp_ops(_SOURCE):
        return False
    # Shapes only, so a compiled graph holds the op without running it while tracing.
    torch.library.register_fake("folo_cpu::bf16_linear")(
        lambda x, packed, bias, out_features: x.new_empty(x.shape[0], out_features))
    return True


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [N, K] in the kernel's [N/16, K/2, 16, 2] layout (zero-padded)."""
    return torch.ops.folo_cpu.pack_bf16_weight(weight)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``x W^T + b`` for a 2-D bf16 ``x`` and ``W`` from ``pack``."""
    return torch.ops.folo_cpu.bf16_linear(x, packed, bias, out_features)
