"""Folo's float32 linear over bf16-stored weights, for AVX2 CPUs (``csrc/bf16w_linear.cpp``).

Where the CPU lacks native bf16 arithmetic, ``dtype="auto"`` runs a bf16
checkpoint in float32, and a float32 linear at decode batch sizes is bound by
reading 4-byte weights. Every such weight is exactly a bf16 value, so this kernel
stores it as bf16 (lossless) and widens it in registers before float32 FMAs:
half the bytes per step, the same float32 arithmetic. ``cpu_linear`` uses it
only for weights that round-trip through bf16 exactly, on a CPU with AVX2 and FMA
but no AVX512 (whose 512-bit float32 kernels in oneDNN outrun a 256-bit one at
large batches, and whose bf16 CPUs run bf16 itself), and where a C++ compiler is
present; elsewhere oneDNN stays.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from folo_core.kernels.cpp_build import load_cpp_ops
from folo_core.platform import cpu_flags

_SOURCE = Path(__file__).with_name("csrc") / "bf16w_linear.cpp"


@functools.cache
def available() -> bool:
    """The CPU has AVX2 and FMA and the kernel library builds and loads."""
    if not {"avx2", "fma"} <= cpu_flags() or not load_cpp_ops(_SOURCE):
        return False
    # Shapes only, so a compiled graph holds the op without running it while tracing.
    torch.library.register_fake("folo_cpu::bf16w_linear")(
        lambda x, packed, bias, out_features: x.new_empty(x.shape[0], out_features))
    return True


def preferred() -> bool:
    """Whether float32 linears of bf16 values should run here (AVX2 without AVX512)."""
    return "avx512f" not in cpu_flags() and available()


def bf16_values(weight: torch.Tensor) -> torch.Tensor | None:
    """A float32 ``weight`` as bf16 if every value is a bf16 value (loaded from a bf16
    checkpoint), else None; ``pack`` takes the result without converting again."""
    if weight.dtype != torch.float32:
        return None
    narrowed = weight.to(torch.bfloat16)
    return narrowed if torch.equal(narrowed.float(), weight) else None


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [N, K] (bf16, or float32 of bf16 values) as bf16 in the kernel's
    [N/16, K, 16] layout (zero-padded)."""
    return torch.ops.folo_cpu.pack_bf16w_weight(weight)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``x W^T + b`` for a 2-D float32 ``x`` and ``W`` from ``pack``."""
    return torch.ops.folo_cpu.bf16w_linear(x, packed, bias, out_features)
