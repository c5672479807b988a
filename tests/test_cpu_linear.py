"""The CPU linear kernels against a float64 reference, over the shapes a model has and the edges.

Folo's AVX512-BF16 kernel runs only where the CPU has the instruction, its AVX2
kernel over bf16-stored float32 weights where the CPU has AVX2 and FMA (the
oneDNN path, tested by every model test, runs everywhere else); their tests say
so when they cannot run.
"""

from __future__ import annotations

import pytest
import torch

from folo_core.kernels import bf16_linear, bf16w_linear, cpu_linear

needs_bf16_kernel = pytest.mark.skipif(not bf16_linear.available(),
                                       reason="needs AVX512-BF16 and a C++ compiler")
needs_bf16w_kernel = pytest.mark.skipif(not bf16w_linear.available(), reason="needs AVX2, FMA and a C++ compiler")


def _reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ w.double().T
    return out if bias is None else out + bias.double()


@needs_bf16_kernel
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (33, 64), (577, 575), (16, 2), (1, 1)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 13, 16, 33, 50, 97, 200, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_kernel_matches_reference(n: int, k: int, m: int, with_bias: bool) -> None:
    """Within the bf16 rounding of the output (fp32 accumulation), for every row and tile remainder,
    odd and padded sizes, and more rows than one panel (96 on the vector path, 256 on AMX, whose
    32-row blocks leave tails of 1, 18, 8 and 12 rows here)."""
    gen = torch.Generator().manual_seed(n * 1000 + k + m)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).bfloat16()
    x = torch.randn(m, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16() if with_bias else None
    y = bf16_linear.linear(x, bf16_linear.pack(w), bias, n)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    ref = _reference(x, w, bias)
    torch.testing.assert_close(y.double(), ref, rtol=2 ** -7, atol=1e-5)


@needs_bf16_kernel
def test_bf16_kernel_agrees_with_f_linear() -> None:
    """Same arithmetic as torch's bf16 matmul (fp32 accumulation, one rounding): at most a rare
    one-ulp difference."""
    w = (torch.randn(1536, 576) / 24).bfloat16()
    x = torch.randn(8, 576).bfloat16()
    y, ref = bf16_linear.linear(x, bf16_linear.pack(w), None, 1536), torch.nn.functional.linear(x, w)
    assert (y != ref).float().mean() < 1e-3
    torch.testing.assert_close(y, ref, rtol=2 ** -7, atol=0)


@needs_bf16w_kernel
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (33, 64), (577, 575), (16, 1), (1, 1)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 13, 16, 33, 50, 97, 200])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16w_kernel_matches_reference(n: int, k: int, m: int, with_bias: bool) -> None:
    """float32 arithmetic over the bf16-stored weight: float32 summation error only, for every
    row block (6 rows) and tile group remainder, odd and padded sizes, and more rows than one panel
    (the panel is 108 rows at K=576, 42 at K=1536)."""
    gen = torch.Generator().manual_seed(n * 1000 + k + m)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).bfloat16().float()
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    y = bf16w_linear.linear(x, bf16w_linear.pack(w), bias, n)
    assert y.shape == (m, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _reference(x, w, bias), rtol=1e-5, atol=1e-5)


@needs_bf16w_kernel
def test_bf16w_kernel_in_a_compiled_graph() -> None:
    """The op has a shape function, so a compiled graph holds it (no graph break) and gives eager's result."""
    w = torch.randn(64, 32).bfloat16().float()
    packed = bf16w_linear.pack(w)

    def f(x: torch.Tensor) -> torch.Tensor:
        return bf16w_linear.linear(x * 2, packed, None, 64).relu()

    x = torch.randn(5, 32)
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)


def test_bf16_exact_detects_float32_weights_from_bf16() -> None:
    """Only a weight whose every value survives the bf16 round trip may be stored in bf16."""
    w = torch.randn(8, 8).bfloat16().float()
    narrowed = bf16w_linear.bf16_values(w)
    assert narrowed is not None and narrowed.dtype == torch.bfloat16 and torch.equal(narrowed.float(), w)
    w[3, 5] += 2 ** -20
    assert bf16w_linear.bf16_values(w) is None
    assert bf16w_linear.bf16_values(w.bfloat16()) is None


def _expected_kernel(w: torch.Tensor) -> str:
    if w.dtype == torch.bfloat16 and bf16_linear.available():
        return cpu_linear.FOLO_BF16
    if bf16w_linear.preferred() and bf16w_linear.bf16_values(w) is not None:
        return cpu_linear.FOLO_BF16W
    return cpu_linear.ONEDNN


@pytest.mark.parametrize("dtype,bf16_values", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True)])
def test_packed_linear_matches_f_linear(dtype: torch.dtype, bf16_values: bool) -> None:
    """Whichever kernel ``pack`` picks on this CPU, the unquantized linear's result is F.linear's."""
    w, bias, x = torch.randn(200, 64, dtype=dtype), torch.randn(200, dtype=dtype), torch.randn(3, 64, dtype=dtype)
    if bf16_values:
        w = w.bfloat16().to(dtype)
    if not cpu_linear.can_pack(w):
        pytest.skip(f"oneDNN cannot multiply {dtype} here")
    kernel, packed = cpu_linear.pack(w)
    assert kernel == _expected_kernel(w)
    torch.testing.assert_close(cpu_linear.packed_linear(x, kernel, packed, bias, 200),
                               torch.nn.functional.linear(x, w, bias), rtol=2 ** -7, atol=1e-5)


@needs_bf16_kernel
def test_bf16_kernel_in_a_compiled_graph() -> None:
    """The op has a shape function, so a compiled graph holds it (no graph break) and gives eager's result."""
    w = torch.randn(64, 32).bfloat16()
    packed = bf16_linear.pack(w)

    def f(x: torch.Tensor) -> torch.Tensor:
        return bf16_linear.linear(x * 2, packed, None, 64).relu()

    x = torch.randn(5, 32).bfloat16()
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)
