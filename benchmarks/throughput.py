"""Offline throughput, modelled on vLLM's ``benchmark_throughput``: Folo vs HF transformers.

    python benchmarks/throughput.py --compare --num-prompts 256 --input-len 272 --output-len 136 \\
        --range-ratio 0.88 --dtype bfloat16

``--compare`` runs both backends in one process on the same requests, model,
dtype and threads, and prints the ratio. Without ``--model`` it uses the
embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from common import BenchRequest, engine_kwargs_from_args, random_requests, vocab_size
from folo_core import LLM, SamplingParams
from folo_core.config import EngineConfig


def run_folo(requests: list[BenchRequest], engine_kwargs: dict) -> float:
    llm = LLM(**engine_kwargs)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=1.0, top_p=1.0, max_tokens=r.output_len, ignore_eos=True) for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == r.output_len for o, r in zip(outputs, requests))
    return elapsed


def run_hf(requests: list[BenchRequest], model_path: str, dtype: torch.dtype, max_batch_size: int) -> float:
    """HF ``generate`` with its best batching: requests sorted by length, left-padded batches."""
    from tqdm import tqdm

    from peers.worker import hf_generate_fn, hf_varlen

    generate = hf_generate_fn(model_path, str(dtype).removeprefix("torch."))
    workload = {"prompts": [r.prompt_token_ids for r in requests], "output_lens": [r.output_len for r in requests],
                "greedy": False}
    with torch.inference_mode():
        return hf_varlen(workload, generate, max_batch_size, lambda batches: tqdm(batches, desc="HF batches"))


def report(name: str, elapsed: float, requests: list[BenchRequest]) -> dict:
    prompt_tokens = sum(len(r.prompt_token_ids) for r in requests)
    output_tokens = sum(r.output_len for r in requests)
    result = {
        "backend": name,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(requests) / elapsed, 3),
        "total_tokens_per_s": round((prompt_tokens + output_tokens) / elapsed, 1),
        "output_tokens_per_s": round(output_tokens / elapsed, 1),
    }
    print(f"[{name}] {result['requests_per_s']} requests/s, {result['total_tokens_per_s']} total tokens/s, "
          f"{result['output_tokens_per_s']} output tokens/s ({result['elapsed_s']} s)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["folo", "hf"], default="folo")
    parser.add_argument("--compare", action="store_true", help="Run folo and hf in this process; print the ratio.")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=272)
    parser.add_argument("--output-len", type=int, default=136)
    parser.add_argument("--range-ratio", type=float, default=0.88)
    parser.add_argument("--hf-max-batch-size", type=int, default=64)
    parser.add_argument("--output-json", default=None)
    EngineConfig.add_cli_args(parser)
    parser.set_defaults(dtype="bfloat16")
    args = parser.parse_args()

    engine_kwargs = engine_kwargs_from_args(args)
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                               vocab_size(engine_kwargs["model"]), seed=engine_kwargs["seed"])
    print(f"{len(requests)} requests, threads={torch.get_num_threads()}, dtype={engine_kwargs['dtype']}")
    results = []
    backends = ["folo", "hf"] if args.compare else [args.backend]
    for backend in backends:
        if backend == "folo":
            elapsed = run_folo(requests, engine_kwargs)
        else:
            elapsed = run_hf(requests, engine_kwargs["model"], getattr(torch, engine_kwargs["dtype"]),
                             args.hf_max_batch_size)
        results.append(report(backend, elapsed, requests))
        gc.collect()
    if args.compare:
        ratio = results[0]["total_tokens_per_s"] / results[1]["total_tokens_per_s"]
        print(f"folo / hf total tokens/s: {ratio:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
