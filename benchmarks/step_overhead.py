"""Per-step engine overhead: everything in a step except the model's own compute.

    python benchmarks/step_overhead.py --num-requests 32 --steps 200

Runs ``LLMEngine.step()`` with the embedded SmolLM2's tokenizer (so outputs are
detokenized) and a stub in place of the model's forward and LM head that returns
zeros at once. What remains is scheduling, input preparation, attention
metadata, sampling metadata, greedy sampling over the full vocabulary, output
processing and detokenization: the budget item 5 of the fast-CPU issue sets
(3 ms at 32 running requests). Prints the median and p90 step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from folo_core import SamplingParams
from folo_core.engine.llm_engine import LLMEngine
from folo_core.platform import cpu_isa_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    engine = LLMEngine.from_engine_args(enforce_eager=True, max_model_len=2048)
    runner = engine.engine_core.executor.model_runner
    hidden_size = runner.model.spec.hidden_size
    vocab = runner.model.spec.vocab_size
    runner.forward = lambda input_ids, positions: torch.zeros(len(input_ids), hidden_size)
    runner.model.compute_logits = lambda hidden: torch.zeros(len(hidden), vocab)

    params = SamplingParams(temperature=0, max_tokens=args.steps + 10, ignore_eos=True)
    for i in range(args.num_requests):
        engine.add_request(str(i), {"prompt_token_ids": list(range(1000 + i, 1000 + i + args.prompt_len))}, params)
    started: set[str] = set()
    while len(started) < args.num_requests:  # prefill until every request decodes
        started |= {o.request_id for o in engine.step() if o.outputs[0].token_ids}
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        outputs = engine.step()
        times.append(time.perf_counter() - start)
        assert len(outputs) == args.num_requests
    times.sort()
    print(f"CPU {cpu_isa_summary()}, {args.num_requests} running requests, {args.steps} decode steps: "
          f"median {statistics.median(times) * 1e3:.2f} ms, p90 {times[int(0.9 * len(times))] * 1e3:.2f} ms per step")


if __name__ == "__main__":
    main()
