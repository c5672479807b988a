"""Unquantized linears on CPU over a weight packed once, at load, for its kernel.

``F.linear`` hands oneDNN/MKL a plain row-major weight and lets it reorder the
weight on every call; at decode batch sizes that reorder costs as much as the
matmul. Reordering once at load into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's freezing does)
streams the weight at memory speed: on a 2-core AVX512-BF16 EPYC, SmolLM2's 120
linears at M=1 take 12 ms instead of 22 ms in bf16 and 23 ms instead of 38 ms in
float32 (``benchmarks/linear_kernels.py`` has the other candidates and why they
lost). The packed tensor is opaque (``torch._mkldnn`` layout), so compiled
graphs never hold it: they name the layer in the ``folo::mkldnn_linear`` op, which
finds the weight in the forward context (a graph compiled ahead of time and saved
cannot take such a tensor as an input).
Where the CPU has AVX512-BF16, bf16 weights go to Folo's own kernel instead
(``bf16_linear``), which streams them faster still at decode batch sizes; on an
AVX2 CPU, float32 weights that are bf16 values (a bf16 checkpoint run in float32)
go to ``bf16w_linear``, which stores them in half the bytes.
"""

from __future__ import annotations

import functools

import torch

from folo_core.forward_context import get_forward_context
from folo_core.kernels import bf16_linear, bf16w_linear
from folo_core.kernels.ops import define_op

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
FOLO_BF16, FOLO_BF16W, ONEDNN = "folo_bf16", "folo_bf16w", "onednn"


@functools.cache
def _mkldnn_dtypes() -> tuple[torch.dtype, ...]:
    if not torch.backends.mkldnn.is_available():
        return ()
    return tuple(d for d in PACKABLE_DTYPES if d != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported())


def can_pack(weight: torch.Tensor) -> bool:
    """A 2-D CPU weight in a dtype this machine's oneDNN multiplies."""
    return weight.device.type == "cpu" and weight.dim() == 2 and weight.dtype in _mkldnn_dtypes()


def pack(weight: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The kernel that will run this weight and the weight in its layout: Folo's
    AVX512-BF16 kernel for bf16 where the CPU has it, Folo's AVX2 kernel for float32
    weights that are all bf16 values, else oneDNN's blocked layout (same shape and
    dtype, opaque storage)."""
    if weight.dtype == torch.bfloat16 and bf16_linear.available():
        return FOLO_BF16, bf16_linear.pack(weight)
    if weight.dtype == torch.float32 and bf16w_linear.preferred():
        narrowed = bf16w_linear.bf16_values(weight)
        if narrowed is not None:
            return FOLO_BF16W, bf16w_linear.pack(narrowed)
    return ONEDNN, torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())


def _linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` with ``W`` in oneDNN's layout; ``x`` is [tokens, in_features]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def packed_linear(x: torch.Tensor, kernel: str, packed_weight: torch.Tensor, bias: torch.Tensor | None,
                  out_features: int) -> torch.Tensor:
    """``x W^T + b`` with ``W`` from ``pack``, called eagerly (a custom op costs about 15 us a
    call); a compiled graph calls ``mkldnn_linear`` for oneDNN's weights instead."""
    if kernel == FOLO_BF16:
        return bf16_linear.linear(x, packed_weight, bias, out_features)
    if kernel == FOLO_BF16W:
        return bf16w_linear.linear(x, packed_weight, bias, out_features)
    return _linear(x, packed_weight, bias)


def _named_linear(x: torch.Tensor, layer_name: str, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """The linear layer ``layer_name`` of the running model on ``x``, its weight in oneDNN's layout."""
    return _linear(x, get_forward_context().linear_layers[layer_name].weight, bias)


def _fake_linear(x: torch.Tensor, layer_name: str, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


# A oneDNN-packed linear as an op a compiled graph can hold: by the layer's name, not its weight.
mkldnn_linear = define_op("mkldnn_linear(Tensor x, str layer_name, Tensor? bias, int out_features) -> Tensor",
                          _named_linear, _fake_linear)
