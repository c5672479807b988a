"""The greedy argmax op against torch.argmax: exactly the same index, ties, -inf and NaN included."""

from __future__ import annotations

import pytest
import torch

from folo_core.kernels import argmax as argmax_module
from folo_core.kernels.argmax import argmax

needs_kernel = pytest.mark.skipif(not argmax_module._kernel_available(), reason="no C++ compiler for the CPU op")


@needs_kernel
@pytest.mark.parametrize("cols", [1, 2, 7, 8, 9, 15, 16, 17, 33, 100, 1000, 49157])
def test_matches_torch_argmax(cols: int) -> None:
    """Random rows at every vector remainder (8 and 16 lanes), with ties and -inf mixed in."""
    gen = torch.Generator().manual_seed(cols)
    x = torch.randn(37, cols, generator=gen)
    x[1] = 0.0  # all tied: index 0
    x[2] = float("-inf")
    x[3, cols // 2:] = x[3].max() + 1  # tied maxima from the middle on
    x[4] = x[4].round()  # many ties among small integers
    x[5, -1] = 1e30  # the maximum in the last column (a tail element)
    x[6] = -0.0
    x[6, cols // 3] = 0.0  # -0.0 == 0.0: the first wins
    out = torch.ops.folo_cpu.argmax_rows(x)
    assert out.dtype == torch.int64
    assert torch.equal(out, x.argmax(dim=-1))


@needs_kernel
@pytest.mark.parametrize("cols", [1, 5, 16, 40, 1003])
def test_nan_is_the_maximum_as_in_torch(cols: int) -> None:
    """torch.argmax returns the first NaN's index; NaN in the first, a middle and the last column."""
    x = torch.randn(4, cols, generator=torch.Generator().manual_seed(1))
    x[0, 0] = float("nan")
    x[1, cols // 2] = float("nan")
    x[2, -1] = float("nan")
    x[3, cols // 3:] = float("nan")
    assert torch.equal(torch.ops.folo_cpu.argmax_rows(x), x.argmax(dim=-1))


@needs_kernel
def test_wrapper_uses_the_op_for_strided_rows_and_torch_elsewhere() -> None:
    """A column slice (not contiguous) still matches; bf16 and empty-row-count inputs fall back to torch."""
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(2))
    assert torch.equal(argmax(x[:, 10:250]), x[:, 10:250].argmax(dim=-1))
    assert torch.equal(argmax(x.bfloat16()), x.bfloat16().argmax(dim=-1))
    assert argmax(torch.empty(0, 300)).shape == (0,)
