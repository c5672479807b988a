"""Serving benchmark for a running ``folo serve`` (modelled on vLLM's ``benchmark_serving.py``).

Sends ``--num-prompts`` streamed completion requests of random token ids
(vLLM's seeded "random" dataset, shared with the offline benchmarks: ``--input-len``
tokens in, exactly ``--output-len`` out with ``ignore_eos``), arriving as a
Poisson process at ``--request-rate`` per second (``inf``: all at once), with at
most ``--max-concurrency`` in flight. Reports completed/failed requests,
throughput, and mean/median/p99 of TTFT, TPOT and inter-token latency.

    folo serve --dtype bfloat16 &
    python benchmarks/serve.py --num-prompts 32 --input-len 128 --output-len 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from common import BenchRequest, random_requests, vocab_size


@dataclass
class RequestResult:
    prompt_len: int
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0  # seconds to the first text chunk
    latency: float = 0.0  # seconds to the last chunk
    itl: list[float] = field(default_factory=list)  # gaps between text chunks
    error: str = ""


async def send_request(client: httpx.AsyncClient, url: str, model: str | None, request: BenchRequest) -> RequestResult:
    result = RequestResult(prompt_len=len(request.prompt_token_ids))
    payload = {"model": model, "prompt": request.prompt_token_ids, "max_tokens": request.output_len,
               "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    now = time.perf_counter()
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.latency = last - start
    result.success = True
    return result


async def run_benchmark(args: argparse.Namespace, requests: list[BenchRequest]) -> tuple[list[RequestResult], float]:
    rng = np.random.default_rng(args.seed)
    limit = asyncio.Semaphore(args.max_concurrency or len(requests))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.base_url.rstrip("/") + args.endpoint

    async def limited(request: BenchRequest) -> RequestResult:
        async with limit:
            return await send_request(client, url, args.model, request)

    async with httpx.AsyncClient(timeout=httpx.Timeout(None), headers=headers,
                                 limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(limited(request)))
            if math.isfinite(args.request_rate):
                await asyncio.sleep(rng.exponential(1.0 / args.request_rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - start


def _ms(seconds: list[float]) -> np.ndarray:
    return np.array(seconds or [0.0]) * 1000.0


def summarize(results: list[RequestResult], duration: float) -> dict[str, float]:
    done = [r for r in results if r.success]
    ttft = _ms([r.ttft for r in done])
    tpot = _ms([(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1])
    itl = _ms([gap for r in done for gap in r.itl])
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    summary = {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": duration,
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration, "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
    }
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl)):
        summary[f"mean_{name}_ms"] = float(values.mean())
        summary[f"median_{name}_ms"] = float(np.median(values))
        summary[f"p99_{name}_ms"] = float(np.percentile(values, 99))
    return summary


def print_summary(summary: dict[str, float], errors: list[str]) -> None:
    rows = [("Successful requests", "completed", "d"), ("Failed requests", "failed", "d"),
            ("Benchmark duration (s)", "duration_s", ".2f"), ("Total input tokens", "total_input_tokens", "d"),
            ("Total generated tokens", "total_output_tokens", "d"),
            ("Request throughput (req/s)", "request_throughput", ".2f"),
            ("Output token throughput (tok/s)", "output_throughput", ".2f"),
            ("Total token throughput (tok/s)", "total_token_throughput", ".2f")]
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    for label, key, fmt in rows:
        print(f"{label + ':':<40}{summary[key]:<10{fmt}}")
    for name, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                        ("itl", "Inter-token Latency")):
        print("{s:{c}^50}".format(s=f" {title} ", c="-"))
        for stat in ("mean", "median", "p99"):
            print(f"{f'{stat.capitalize()} {name.upper()} (ms):':<40}{summary[f'{stat}_{name}_ms']:<10.2f}")
    print("=" * 50)
    for error in errors[:5]:
        print(f"error: {error}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--endpoint", default="/v1/completions")
    parser.add_argument("--model", default=None, help="Model name to send (default: the server's).")
    parser.add_argument("--tokenizer", default=None,
                        help="Checkpoint whose vocabulary the random prompts use (default: the embedded SmolLM2).")
    parser.add_argument("--api-key", default=os.environ.get("FOLO_API_KEY"))
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--range-ratio", type=float, default=0.0,
                        help="Lengths uniform in [len * (1 - r), len * (1 + r)] (vLLM's random dataset).")
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="Requests per second, Poisson arrivals (default inf: all at once).")
    parser.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-json", default=None, help="Also write the summary to this JSON file.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tokenizer is None:
        from folo_core.default_model import default_model_path

        args.tokenizer = default_model_path()
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                               vocab_size(args.tokenizer), args.seed)
    results, duration = asyncio.run(run_benchmark(args, requests))
    summary = summarize(results, duration)
    print_summary(summary, [r.error for r in results if not r.success])
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump({"args": vars(args), **summary}, f, indent=2)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
