"""GPTQ 4-bit vs bfloat16 in one process: weight memory, batch-1 decode, prefill, batched throughput.

    python benchmarks/gptq.py --output-json gptq.json

Without ``--quantized`` it quantizes the embedded SmolLM2-135M-Instruct once
(``folo quantize``: 4-bit, group 128, built-in calibration sample) into Folo's
cache folder, in a separate process, and compares it with the bfloat16
original. Both engines stay loaded (prefix caching off, as prompts repeat) and
the measurements alternate between them, so load from other processes hits
both alike. ``--kernels`` adds the
per-linear timings behind the kernel choice (int4pack vs dense bf16 vs
dequantize-then-matmul) on the model's real layers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from common import random_requests
from folo_core import LLM, SamplingParams
from folo_plugins.gptq.kernels import FORCE_ENV


def uptime_load() -> float:
    return os.getloadavg()[0]


def quantized_default_model() -> str:
    from folo_core.default_model import DEFAULT_MODEL_NAME, cache_dir

    target = cache_dir() / f"{DEFAULT_MODEL_NAME}-GPTQ-4bit-g128"
    if not (target / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "folo_core.entrypoints.cli", "quantize", str(target)], check=True)
    return str(target)


def decode_tokens_per_s(llm: LLM, prompt: list[int], new_tokens: int) -> float:
    """One request: (new_tokens - 1) / (time for new_tokens - time for the first token)."""
    def run(max_tokens: int) -> float:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        return time.perf_counter() - start

    return (new_tokens - 1) / (run(new_tokens) - run(1))


def prefill_ms(llm: LLM, prompt: list[int]) -> float:
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    return (time.perf_counter() - start) * 1e3


def batched_tokens_per_s(llm: LLM, requests) -> tuple[float, float]:
    """(total, output) tokens/s over a batch of random requests, as benchmarks/throughput.py counts them."""
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=1.0, max_tokens=r.output_len, ignore_eos=True, seed=i)
              for i, r in enumerate(requests)]
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    output = sum(r.output_len for r in requests)
    return (sum(len(r.prompt_token_ids) for r in requests) + output) / elapsed, output / elapsed


def alternate(engines: dict[str, LLM], measure: Callable[[LLM], Any], repeats: int) -> dict[str, list]:
    results: dict[str, list] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, llm in engines.items():
            results[name].append(measure(llm))
    return results


def time_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def kernel_table(engines: dict[str, LLM], rows: list[int]) -> list[dict]:
    """Layer 0's linears, one batch size at a time: the 4-bit model's int4pack kernel, the bf16 model's
    dense weight, and the same GPTQ layer through the dequantize-then-matmul reference."""
    def layers(llm: LLM) -> dict[str, torch.nn.Module]:
        model = llm.llm_engine.engine_core.executor.model_runner.model
        return {name.removeprefix("model.layers.0."): m for name, m in model.named_modules()
                if name.startswith("model.layers.0.") and hasattr(m, "quant_method")}

    dense, int4, dequant = (layers(engines[name]) for name in ("bf16", "gptq-4bit", "gptq-4bit-dequant"))
    table = []
    for name, layer in int4.items():
        weight = dense[name].weight
        for m in rows:
            x = torch.randn(m, weight.shape[1], dtype=torch.bfloat16)
            reps = max(3, 400 // m)
            row = {"layer": name, "K": weight.shape[1], "N": weight.shape[0], "M": m,
                   "int4pack_ms": time_ms(lambda: layer.kernel(x, None), reps),
                   "dense_bf16_ms": time_ms(lambda: torch.nn.functional.linear(x, weight), reps),
                   "dequant_ms": time_ms(lambda: dequant[name].kernel(x, None), 3)}
            table.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="bf16 checkpoint (default: the embedded SmolLM2)")
    parser.add_argument("--quantized", default=None, help="its GPTQ checkpoint (default: quantize it once)")
    parser.add_argument("--decode-prompt-len", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", action="store_true", help="also time layer 0's linears per batch size")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()

    if args.model is None:
        from folo_core.default_model import default_model_path

        args.model = default_model_path()
    args.quantized = args.quantized or quantized_default_model()
    load_before = uptime_load()
    # No prefix caching: the same prompts are timed repeatedly.
    engines = {"bf16": LLM(args.model, dtype="bfloat16", enable_prefix_caching=False),
               "gptq-4bit": LLM(args.quantized, dtype="bfloat16", enable_prefix_caching=False)}
    vocab = engines["bf16"].get_tokenizer().vocab_size
    prompt = random_requests(1, args.decode_prompt_len, 1, 0.0, vocab, seed=1)[0].prompt_token_ids
    long_prompt = random_requests(1, args.prefill_len, 1, 0.0, vocab, seed=2)[0].prompt_token_ids
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, 0.5, vocab, seed=3)
    for llm in engines.values():  # warm up: first calls pay one-off costs
        decode_tokens_per_s(llm, prompt, 8)

    decode = alternate(engines, lambda llm: decode_tokens_per_s(llm, prompt, args.decode_tokens), args.repeats)
    prefill = alternate(engines, lambda llm: prefill_ms(llm, long_prompt), args.repeats)
    batched = alternate(engines, lambda llm: batched_tokens_per_s(llm, requests), max(1, args.repeats - 1))
    results = {}
    for name, llm in engines.items():
        memory = llm.llm_engine.get_stats().weight_memory
        results[name] = {
            "weight_mib": round(memory.total_bytes / 2**20, 1),
            "quantized_linears_mib": round(memory.quantized_bytes / 2**20, 1),
            "quantized_ratio": None if memory.quantized_ratio is None else round(memory.quantized_ratio, 3),
            "decode_tok_per_s": round(statistics.median(decode[name]), 1),
            f"prefill_{args.prefill_len}_ms": round(statistics.median(prefill[name]), 1),
            "batched_total_tok_per_s": round(statistics.median(t for t, _ in batched[name]), 1),
            "batched_output_tok_per_s": round(statistics.median(o for _, o in batched[name]), 1),
        }
        print(f"[{name}] {json.dumps(results[name])}")
    kernels = []
    if args.kernels:
        os.environ[FORCE_ENV] = "dequant"  # read while loading: every layer gets the reference kernel
        engines["gptq-4bit-dequant"] = LLM(args.quantized, dtype="bfloat16", enable_prefix_caching=False)
        del os.environ[FORCE_ENV]
        kernels = kernel_table(engines, [1, 4, 16, 64, 256, 1024])
    conditions = {"threads": torch.get_num_threads(), "load_before": round(load_before, 2),
                  "load_after": round(uptime_load(), 2), "torch": torch.__version__}
    print(f"conditions: {json.dumps(conditions)}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": vars(args), "results": results, "kernels": kernels, "conditions": conditions}, f,
                      indent=2)


if __name__ == "__main__":
    main()
