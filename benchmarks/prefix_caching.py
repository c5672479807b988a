"""Prefix caching on vs off on a shared-prefix workload, in one process run.

    python benchmarks/prefix_caching.py --num-prompts 64 --prefix-len 1024 --suffix-len 80 \\
        --range-ratio 0.6 --output-len 32 --dtype bfloat16

Every request shares ``--prefix-len`` random tokens followed by a unique suffix
(32..128 tokens with the defaults). All requests arrive at once; TTFT is
measured from arrival to the first token. With caching on, one warm-up request
fills the cache first (as a system prompt would be in a running server).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import engine_kwargs_from_args, random_requests, vocab_size
from folo_core import LLM, SamplingParams
from folo_core.config import EngineConfig


def run(engine_kwargs: dict, prompts: list[list[int]], output_len: int, caching: bool) -> dict:
    llm = LLM(**engine_kwargs, enable_prefix_caching=caching)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate({"prompt_token_ids": prompts[0]}, params, use_tqdm=False)  # warm-up (and cache fill)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    elapsed = time.perf_counter() - start
    ttfts = [o.metrics.time_to_first_token for o in outputs]
    tokens = sum(len(p) + output_len for p in prompts)
    stats = llm.llm_engine.get_stats().prefix_cache
    result = {
        "caching": caching,
        "mean_ttft_s": statistics.mean(ttfts),
        "median_ttft_s": statistics.median(ttfts),
        "total_tokens_per_s": tokens / elapsed,
        "elapsed_s": elapsed,
        "hit_rate": stats.hit_rate,
        "outputs": [o.outputs[0].token_ids for o in outputs],
    }
    print(f"[caching {'on ' if caching else 'off'}] mean TTFT {result['mean_ttft_s']:.3f} s, "
          f"median TTFT {result['median_ttft_s']:.3f} s, {result['total_tokens_per_s']:.1f} total tokens/s, "
          f"prefix-cache hit rate {stats.hit_rate:.1%} ({stats.hits}/{stats.queries} tokens)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--suffix-len", type=int, default=80)
    parser.add_argument("--range-ratio", type=float, default=0.6)
    parser.add_argument("--output-len", type=int, default=32)
    EngineConfig.add_cli_args(parser)
    parser.set_defaults(dtype="bfloat16")
    args = parser.parse_args()
    engine_kwargs = engine_kwargs_from_args(args)
    engine_kwargs.pop("enable_prefix_caching")
    vocab, seed = vocab_size(engine_kwargs["model"]), engine_kwargs["seed"]
    prefix = random_requests(1, args.prefix_len, 1, 0.0, vocab, seed=seed)[0].prompt_token_ids
    suffixes = random_requests(args.num_prompts, args.suffix_len, 1, args.range_ratio, vocab, seed=seed + 1)
    prompts = [prefix + s.prompt_token_ids for s in suffixes]
    off = run(engine_kwargs, prompts, args.output_len, caching=False)
    on = run(engine_kwargs, prompts, args.output_len, caching=True)
    same = sum(a == b for a, b in zip(off["outputs"], on["outputs"]))
    print(f"TTFT ratio (off / on): {off['mean_ttft_s'] / on['mean_ttft_s']:.2f}x; "
          f"throughput ratio (on / off): {on['total_tokens_per_s'] / off['total_tokens_per_s']:.2f}x; "
          f"identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
