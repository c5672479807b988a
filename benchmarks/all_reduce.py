"""What tensor parallelism's all-reduces cost per decode step with gloo on this machine.

    python benchmarks/all_reduce.py --hidden-size 576 --num-layers 30 --tokens 1 8 32

Two ranks (spawned processes, gloo over 127.0.0.1) all-reduce a
[tokens, hidden] tensor twice per layer, as ``o_proj`` and ``down_proj`` do in a
step; prints the median time per step of those all-reduces (for SmolLM2's
shape by default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, args: argparse.Namespace, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    for tokens in args.tokens:
        x = torch.randn(tokens, args.hidden_size, dtype=dtype)
        times = []
        for step in range(args.steps + 5):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(2 * args.num_layers):
                dist.all_reduce(x)
            if step >= 5:
                times.append(time.perf_counter() - start)
        if rank == 0:
            out.put((tokens, statistics.median(times)))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=576)
    parser.add_argument("--num-layers", type=int, default=30)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    from folo_plugins.executors.multiproc import _free_port
    from folo_core.platform import cpu_isa_summary

    context = mp.get_context("spawn")
    out = context.Queue()
    mp.start_processes(_rank, args=(args, _free_port(), out), nprocs=2, start_method="spawn")
    print(f"CPU {cpu_isa_summary()}; 2 gloo ranks; {2 * args.num_layers} all-reduces of "
          f"[tokens, {args.hidden_size}] {args.dtype} per step")
    for _ in args.tokens:
        tokens, seconds = out.get(timeout=10)
        print(f"tokens {tokens}: {seconds * 1e3:.2f} ms per step")


if __name__ == "__main__":
    main()
