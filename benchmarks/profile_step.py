"""Where one decode step's time goes: the torch profiler over a few steps of N running requests.

    python benchmarks/profile_step.py --num-requests 128

Loads the embedded SmolLM2 with default options (``dtype="auto"``, compiled),
queues N requests of random prompt tokens, runs prefill and a few decode
steps untimed, prints the median decode-step time, then profiles more decode
steps and prints the ops by self CPU time (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from folo_core import SamplingParams
from folo_core.engine.llm_engine import LLMEngine
from folo_core.platform import cpu_isa_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=12, help="Prefill and first decode steps, untimed.")
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--profiled-steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    engine = LLMEngine.from_engine_args(model=None)
    generator = torch.Generator().manual_seed(0)
    steps = args.warmup_steps + args.timed_steps + args.profiled_steps
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    for i in range(args.num_requests):
        prompt = torch.randint(100, 40000, (args.prompt_len,), generator=generator).tolist()
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    for _ in range(args.warmup_steps):
        engine.step()
    times = []
    for _ in range(args.timed_steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    print(f"{cpu_isa_summary()}; N={args.num_requests}: decode step median {statistics.median(times) * 1e3:.1f} ms")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profiled_steps):
            engine.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
