"""The paged C++ decode-attention kernel alone: one call per layer's worth of decode tokens.

    python benchmarks/paged_attention.py                      # the shipped kernel
    python benchmarks/paged_attention.py --kernel-source OLD.cpp   # another version of it

Fills a paged KV cache with random keys and values for N requests of ``--context``
tokens each (blocks shuffled, as a running engine leaves them), then times
``folo_cpu::paged_decode_attention`` for one decode token per request and prints the
median time per call and the KV bytes read per second, for the SmolLM2 and
Qwen2.5-0.5B attention shapes. Run two sources in turn (each process loads one, the
op name is the same) to compare kernel versions on one machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from folo_core.kernels.cpp_build import load_cpp_ops
from folo_core.platform import cpu_isa_summary

SHIPPED = Path(__file__).resolve().parents[1] / "folo_plugins" / "paged" / "csrc" / "paged_attention.cpp"
# (name, query heads, KV heads, head size)
SHAPES = [("smollm2", 9, 3, 64), ("qwen2.5-0.5b", 14, 2, 64)]


def time_call(num_reqs: int, context: int, heads: int, kv_heads: int, head_size: int, dtype: torch.dtype,
              block_size: int, repeats: int, layers: int) -> float:
    blocks_per_req = -(-context // block_size)
    num_blocks = num_reqs * blocks_per_req
    generator = torch.Generator().manual_seed(0)
    shape = (num_blocks, block_size, kv_heads, head_size)
    caches = [(torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype))
              for _ in range(layers)]
    block_table = torch.randperm(num_blocks, generator=generator).to(torch.int32).view(num_reqs, blocks_per_req)
    seq_lens = torch.full((num_reqs,), context, dtype=torch.int32)
    query = torch.randn(num_reqs, heads, head_size, generator=generator).to(dtype)
    op = torch.ops.folo_cpu.paged_decode_attention
    for key_cache, value_cache in caches[:3]:
        op(query, key_cache, value_cache, block_table, seq_lens, head_size ** -0.5, 0, 0.0)
    times = []
    for i in range(repeats):
        key_cache, value_cache = caches[i % layers]
        start = time.perf_counter()
        op(query, key_cache, value_cache, block_table, seq_lens, head_size ** -0.5, 0, 0.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel-source", type=Path, default=SHIPPED)
    parser.add_argument("--num-requests", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--layers", type=int, default=1,
                        help="Caches called in turn, one per layer: 30 makes the KV come from memory, as in a "
                             "running engine, rather than from the last-level cache.")
    args = parser.parse_args()
    assert load_cpp_ops(args.kernel_source), f"{args.kernel_source} did not build"
    dtype = getattr(torch, args.dtype)
    print(f"{cpu_isa_summary()}; {torch.get_num_threads()} threads; {args.kernel_source.name}; {args.dtype}; "
          f"context {args.context}; {args.layers} layer caches")
    print(f"{'shape':<14}{'N':>5}{'us/call':>10}{'KV GB/s':>9}")
    for name, heads, kv_heads, head_size in SHAPES:
        for n in args.num_requests:
            seconds = time_call(n, args.context, heads, kv_heads, head_size, dtype, args.block_size, args.repeats,
                                args.layers)
            kv_bytes = 2 * n * args.context * kv_heads * head_size * dtype.itemsize
            print(f"{name:<14}{n:>5}{seconds * 1e6:>10.0f}{kv_bytes / seconds / 1e9:>9.1f}")


if __name__ == "__main__":
    main()
