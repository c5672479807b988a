"""The fastest any engine could run compare.py's fixed-N workloads on this CPU in float32.

    python benchmarks/roofline.py --models smollm2 qwen2.5-0.5b-random [--measured smollm2.json ...]

Measures two ceilings of this machine with torch's threads: the float32 multiply-add
peak (register-only FMA chains, ``benchmarks/csrc/fma_peak.cpp``) and the memory read
bandwidth (``torch.sum`` over 512 MB), each the best of five tries. Then, for each ``fixed-N`` workload (N prompts of
``--input-len`` tokens, ``--output-len`` greedy tokens each), it adds up a lower bound on
the time of every engine step: prefill in chunks of ``--chunk`` tokens, then one decode step
per output token, each taking at least its arithmetic (linears, the LM head on sampled rows,
attention) over the FMA peak and at least its bytes (weights at ``--weight-bytes`` each, the
KV cache read at ``--kv-bytes`` a value) over the bandwidth. Total tokens over that time is
the ceiling: no float32 engine reaches it, since it assumes perfect overlap and peak speed
throughout. With ``--measured`` (compare.py's ``--output-json`` files) it prints each
system's share of the ceiling and the largest ratio Folo could have over it here.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from folo_core.kernels.cpp_build import load_cpp_ops
from folo_core.platform import cpu_isa_summary

HERE = Path(__file__).resolve().parent


def fma_peak_gflops() -> float:
    assert load_cpp_ops(HERE / "csrc" / "fma_peak.cpp"), "benchmarks/csrc/fma_peak.cpp did not build"
    torch.ops.folo_bench.fma_peak(1_000_000)  # wakes the threads and lifts the clock
    # The best of several: on a shared host the clock a core holds moves by tens of percent
    # within seconds, and a ceiling must not be lowered by a slow moment.
    return max(torch.ops.folo_bench.fma_peak(20_000_000) for _ in range(5))


def read_bandwidth_gbs(megabytes: int = 512) -> float:
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / min(times) / 1e9


@dataclass(frozen=True)
class Shape:
    """What a step's arithmetic and bytes depend on, from the HF config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layer_linear_params: int  # q, k, v, o, gate, up, down of one layer
    vocab: int

    @classmethod
    def from_config(cls, cfg) -> "Shape":
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        h, i = cfg.hidden_size, cfg.intermediate_size
        params = h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h + 3 * h * i
        return cls(cfg.num_hidden_layers, h, heads, kv_heads, head_dim, params, cfg.vocab_size)


def step_floor(shape: Shape, tokens: int, sampled: int, context_tokens: int, attended: int, peak: float, bw: float,
               weight_bytes: float, kv_bytes: float) -> float:
    """Seconds one step takes at least: ``tokens`` run through the layers, ``sampled`` rows
    through the LM head, ``attended`` query-key pairs summed over the step's tokens, and
    ``context_tokens`` cached tokens read from the KV cache."""
    flops = 2 * tokens * shape.layers * shape.layer_linear_params + 2 * sampled * shape.vocab * shape.hidden
    flops += 4 * attended * shape.layers * shape.heads * shape.head_dim
    weights = (shape.layers * shape.layer_linear_params + (shape.vocab * shape.hidden if sampled else 0)) * weight_bytes
    kv = 2 * context_tokens * shape.layers * shape.kv_heads * shape.head_dim * kv_bytes
    return max(flops / (peak * 1e9), (weights + kv) / (bw * 1e9))


def fixed_n_floor(shape: Shape, n: int, prompt: int, output: int, chunk: int, peak: float, bw: float,
                  weight_bytes: float, kv_bytes: float) -> float:
    """Seconds for N equal requests at least: prefill chunks, then a decode step per output token."""
    seconds, left = 0.0, n * prompt
    while left:  # chunks cut across prompts; each prompt attends causally to itself
        tokens = min(chunk, left)
        seconds += step_floor(shape, tokens, 0, 0, tokens * (prompt + 1) // 2, peak, bw, weight_bytes, kv_bytes)
        left -= tokens
    for step in range(1, output):  # the first output token comes with the prefill
        context = prompt + step
        seconds += step_floor(shape, n, n, n * context, n * context, peak, bw, weight_bytes, kv_bytes)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5-0.5b-random"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=2048, help="prefill tokens per step (max_num_batched_tokens)")
    parser.add_argument("--weight-bytes", type=float, default=2.0,
                        help="bytes per weight streamed (2: a bf16 checkpoint's weights kept in bf16)")
    parser.add_argument("--kv-bytes", type=float, default=4.0, help="bytes per cached key or value element")
    parser.add_argument("--measured", type=Path, nargs="*", default=[], help="compare.py --output-json files")
    args = parser.parse_args()

    from transformers import AutoConfig

    from compare import model_dir

    peak, bw = fma_peak_gflops(), read_bandwidth_gbs()
    print(f"CPU {cpu_isa_summary()}, {torch.get_num_threads()} threads: float32 FMA peak {peak:.1f} GFLOP/s, "
          f"memory read {bw:.1f} GB/s")
    measured: dict[str, dict[str, dict]] = {}
    for path in args.measured:
        for model, rows in json.loads(path.read_text())["results"].items():
            measured.setdefault(model, {}).update({row["workload"]: row for row in rows})
    for name in args.models:
        shape = Shape.from_config(AutoConfig.from_pretrained(model_dir(name)))
        rows = measured.get(name, {})
        systems = sorted({k[:-len("_tok_s")] for row in rows.values() for k in row if k.endswith("_tok_s")})
        head = ["N", "ceiling tok/s"] + [f"{s} (share)" for s in systems]
        head += [f"ceiling / {s}" for s in systems if s != "folo"]
        print(f"\n{name}\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for n in args.batch_sizes:
            floor = fixed_n_floor(shape, n, args.input_len, args.output_len, args.chunk, peak, bw, args.weight_bytes,
                                  args.kv_bytes)
            ceiling = n * (args.input_len + args.output_len) / floor
            row = rows.get(f"fixed-{n}", {})
            cells = [str(n), f"{ceiling:.0f}"]
            cells += [f"{row[f'{s}_tok_s']:.0f} ({row[f'{s}_tok_s'] / ceiling:.0%})" if f"{s}_tok_s" in row else "-"
                      for s in systems]
            cells += [f"{ceiling / row[f'{s}_tok_s']:.2f}x" if f"{s}_tok_s" in row else "-"
                      for s in systems if s != "folo"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
