"""GPTQ linear kernels in order of preference, and the choice for each layer.

``FOLO_GPTQ_KERNEL=<name>`` forces one kernel (it still has to accept the
layer) to compare kernels or to step around one.
"""

from __future__ import annotations

import os

import torch

from folo_core.registry import SelectionContext
from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels.base import GPTQKernel, GPTQWeights
from folo_plugins.gptq.kernels.cpu_int4pack import CPUInt4PackKernel
from folo_plugins.gptq.kernels.dequant import DequantKernel
from folo_plugins.gptq.kernels.gptqmodel_kernels import GPTQModelKernel

KERNELS: tuple[type[GPTQKernel], ...] = (GPTQModelKernel, CPUInt4PackKernel, DequantKernel)
FORCE_ENV = "FOLO_GPTQ_KERNEL"


def _forced_reasons(kernel: type[GPTQKernel]) -> list[str]:
    forced = os.environ.get(FORCE_ENV)
    if forced and forced not in {k.name for k in KERNELS}:
        raise ValueError(f"{FORCE_ENV}={forced!r} names no GPTQ kernel; known: {', '.join(k.name for k in KERNELS)}")
    return [f"{FORCE_ENV}={forced} asks for another kernel"] if forced and forced != kernel.name else []


def kernel_candidates(scheme: GPTQScheme, ctx: SelectionContext) -> list[tuple[str, list[str]]]:
    """Every kernel in preference order with why it cannot run the scheme here (before loading)."""
    device, dtype = torch.device(ctx.device), ctx.dtype or torch.get_default_dtype()
    return [(k.name, _forced_reasons(k) + k.config_reasons(scheme, device, dtype)) for k in KERNELS]


def choose_kernel(weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> type[GPTQKernel]:
    """The first kernel that accepts this layer (the reference accepts every layer unless another is forced)."""
    device = weights.qweight.device
    refusals = []
    for kernel in KERNELS:
        reasons = _forced_reasons(kernel) + kernel.config_reasons(scheme, device, dtype)
        reasons = reasons or kernel.layer_reasons(weights, scheme, dtype)
        if not reasons:
            return kernel
        refusals.append(f"{kernel.name}: {'; '.join(reasons)}")
    raise ValueError(f"no GPTQ kernel takes a {weights.input_size}x{weights.output_size} layer ({' | '.join(refusals)})")
