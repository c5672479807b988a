"""Which torch CPU kernel runs a model's linears fastest, at the batch sizes decode runs.

At M <= 8 rows a linear is bound by reading its weight, so what counts is how
fast a kernel streams the weight bytes. This sweeps every linear of a decoder
stack (distinct weights, as in a real forward, so nothing stays in cache) with
each candidate and prints milliseconds per sweep and the weight bytes per
second:

    python benchmarks/linear_kernels.py                      # SmolLM2-135M shapes
    python benchmarks/linear_kernels.py --hidden 896 --intermediate 4864 --heads 14 --kv-heads 2 --layers 24
    python benchmarks/linear_kernels.py --lm-head 49152 --methods folo_bf16 --kernel-source OLD.cpp

Candidates: ``aten`` (``F.linear``, what eager runs), ``mm_t`` (``torch.mm`` on
a pre-transposed weight), ``mkldnn`` (oneDNN prepacked weight,
``torch.ops.mkldnn._linear_pointwise``, what inductor's freezing emits for
bf16), ``mkl`` (MKL packed sgemm, float32 only, what freezing emits for
float32), ``folo_bf16`` (Folo's AVX512-BF16 kernel, ``folo_core/kernels/csrc/bf16_linear.cpp``)
``folo_bf16w`` (Folo's AVX2 kernel: float32 arithmetic over bf16-stored
weights, ``csrc/bf16w_linear.cpp``, for float32 weights that are bf16 values)
and ``int8`` (weight-only int8 with per-channel scales,
``torch._weight_int8pack_mm``: half the bytes of bf16, not bit-exact).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from folo_core.kernels import bf16_linear, bf16w_linear
from folo_core.platform import cpu_isa_summary


def layer_shapes(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int) -> list[tuple[int, int]]:
    """(out_features, in_features) of one decoder layer's fused linears."""
    return [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim),
            (2 * intermediate, hidden), (hidden, intermediate)]


def prepare(method: str, w: torch.Tensor, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "aten":
        return lambda x: F.linear(x, w)
    if method == "mm_t":
        wt = w.t().contiguous()
        return lambda x: torch.mm(x, wt)
    if method == "mkldnn":
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if method == "mkl":
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        return lambda x: torch.ops.mkl._mkl_linear(x, packed, w, None, m)
    if method == "folo_bf16":
        if not bf16_linear.available() or w.dtype != torch.bfloat16:
            raise RuntimeError("needs bf16 and the AVX512-BF16 kernel")
        packed = bf16_linear.pack(w)
        return lambda x: bf16_linear.linear(x, packed, None, w.shape[0])
    if method == "folo_bf16w":
        if not bf16w_linear.available() or w.dtype != torch.float32:
            raise RuntimeError("needs float32 and the AVX2 kernel")
        packed = bf16w_linear.pack(w)
        return lambda x: bf16w_linear.linear(x, packed, None, w.shape[0])
    if method == "int8":
        scales = w.float().abs().amax(dim=1).clamp_min(1e-8) / 127
        q = (w.float() / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        scales = scales.to(w.dtype)
        return lambda x: torch._weight_int8pack_mm(x, q, scales)
    raise ValueError(method)


def weight_bytes(method: str, shapes: list[tuple[int, int]], dtype: torch.dtype) -> int:
    itemsize = {"int8": 1, "folo_bf16w": 2}.get(method, torch.empty((), dtype=dtype).element_size())
    return sum(n * k for n, k in shapes) * itemsize


def sweep_ms(fns: list[tuple[Callable, int]], m: int, dtype: torch.dtype, repeats: int) -> float:
    inputs = {k: torch.randn(m, k, dtype=dtype) for _, k in fns}
    for fn, k in fns:  # warm-up (and oneDNN primitive creation)
        fn(inputs[k])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for fn, k in fns:
            fn(inputs[k])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=["aten", "mm_t", "mkldnn", "mkl", "folo_bf16", "folo_bf16w", "int8"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--lm-head", type=int, default=0, metavar="VOCAB",
                        help="Time the LM head [VOCAB, hidden] alone instead of the decoder's linears.")
    parser.add_argument("--kernel-source", type=Path, default=None,
                        help="Another version of csrc/bf16_linear.cpp for folo_bf16 (one per process).")
    args = parser.parse_args()
    if args.kernel_source is not None:
        bf16_linear._SOURCE = args.kernel_source  # before the first build: the op name is the same

    shapes = ([(args.lm_head, args.hidden)] if args.lm_head else
              layer_shapes(args.hidden, args.intermediate, args.heads, args.kv_heads, args.head_dim) * args.layers)
    print(f"CPU: {cpu_isa_summary()}, threads={torch.get_num_threads()}, {len(shapes)} linears, "
          f"torch {torch.__version__}")
    print("| dtype | method | " + " | ".join(f"M={m} ms (GB/s)" for m in args.rows) + " |")
    print("|---|---|" + "---|" * len(args.rows))
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        # bf16 values (as from a bf16 checkpoint), so folo_bf16w may store them in bf16.
        weights = [(torch.randn(n, k) / k ** 0.5).to(torch.bfloat16).to(dtype) for n, k in shapes]
        for method in args.methods:
            if method == "mkl" and dtype != torch.float32:
                continue
            cells = []
            for m in args.rows:
                try:
                    fns = [(prepare(method, w, m), w.shape[1]) for w in weights]
                    ms = sweep_ms(fns, m, dtype, args.repeats)
                except RuntimeError as exc:
                    cells.append(f"n/a ({str(exc).splitlines()[0][:40]})")
                    continue
                gbps = weight_bytes(method, shapes, dtype) / ms / 1e6
                cells.append(f"{ms:.2f} ({gbps:.1f})")
            print(f"| {dtype_name} | {method} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
