"""What the host CPU can compute fast, for choosing the compute dtype.

A CPU without native bf16/fp16 arithmetic runs bf16 matmuls through conversion
loops (about 7x slower than fp32 on an AVX2-only EPYC); one with AVX512-BF16 or
AMX runs them about 2x faster than fp32. ``dtype="auto"`` reads this to pick the
fast choice rather than blindly following the checkpoint's dtype.
"""

from __future__ import annotations

import functools

import torch

# cpuinfo flags that mean native half-precision matmul support.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The ISA flags of this CPU (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_half_dtypes() -> set[torch.dtype]:
    """The half-precision dtypes this CPU multiplies natively."""
    flags = cpu_flags()
    native = set()
    if flags & BF16_FLAGS:
        native.add(torch.bfloat16)
    if flags & FP16_FLAGS:
        native.add(torch.float16)
    return native


def cpu_isa_summary() -> str:
    """A short description for logs and benchmark reports, e.g. ``AVX512 (avx512_bf16)``."""
    shown = sorted(cpu_flags() & (BF16_FLAGS | FP16_FLAGS | {"avx2", "avx512f"}))
    return f"{torch.backends.cpu.get_cpu_capability()} ({', '.join(shown) or 'no native bf16/fp16'})"


def resolve_auto_dtype(checkpoint_dtype: torch.dtype | None, device: str) -> tuple[torch.dtype, str]:
    """``dtype="auto"``: (compute dtype, why) for a checkpoint stored in ``checkpoint_dtype``.

    On CUDA, and for a float32 checkpoint, the checkpoint's dtype. On a CPU, a
    bf16/fp16 checkpoint runs in that dtype only where the CPU computes it
    natively, else in float32 (twice the weight memory, several times the speed).
    """
    if checkpoint_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return torch.float32, f"checkpoint dtype {checkpoint_dtype} is not a float type Folo runs"
    if device != "cpu" or checkpoint_dtype == torch.float32:
        return checkpoint_dtype, f"the checkpoint's dtype on {device}"
    if checkpoint_dtype in cpu_native_half_dtypes():
        return checkpoint_dtype, f"the checkpoint's dtype; this CPU computes it natively ({cpu_isa_summary()})"
    return torch.float32, (f"the checkpoint is {checkpoint_dtype}, but this CPU has no native "
                           f"{checkpoint_dtype} matmul ({cpu_isa_summary()}), so float32 is faster")
