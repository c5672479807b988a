"""Folo's fused MoE against HF transformers' per-expert loop, one layer, on CPU.

    python benchmarks/fused_moe.py                       # Qwen1.5-MoE-A2.7B's layer shape
    python benchmarks/fused_moe.py --experts 128 --top-k 8 --hidden 2048 --intermediate 768   # Qwen3-30B-A3B

Both run the same random weights and the same routing (uniform random router
logits, so every expert is hit at large batches): HF's ``Qwen2MoeExperts`` loops
over the experts the batch hit, two matmuls and an index_add each; Folo's
``fused_experts`` sorts the (token, expert) pairs once and runs each projection
as one grouped matmul. Prints milliseconds per layer call (median of the
repeats, the two alternating) and the ratio, per token count and dtype.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from folo_core.platform import cpu_isa_summary
from folo_models.layers.fused_moe import fused_experts, select_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128, 512])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts

    print(f"CPU: {cpu_isa_summary()}, threads={torch.get_num_threads()}, torch {torch.__version__}; "
          f"{args.experts} experts, top {args.top_k}, hidden {args.hidden}, intermediate {args.intermediate}")
    print("| dtype | tokens | HF per-expert loop ms | Folo fused ms | speedup |")
    print("|---|---|---|---|---|")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        hf = Qwen2MoeExperts(Qwen2MoeConfig(num_experts=args.experts, hidden_size=args.hidden,
                                            moe_intermediate_size=args.intermediate, hidden_act="silu"))
        hf.gate_up_proj.data = torch.randn(args.experts, 2 * args.intermediate, args.hidden, dtype=dtype) * 0.02
        hf.down_proj.data = torch.randn(args.experts, args.hidden, args.intermediate, dtype=dtype) * 0.02
        for tokens in args.tokens:
            x = torch.randn(tokens, args.hidden, dtype=dtype)
            weights, ids = select_experts(torch.randn(tokens, args.experts, dtype=dtype), args.top_k, True)
            systems = {
                "hf": lambda: hf(x, ids, weights),
                "folo": lambda: fused_experts(x, hf.gate_up_proj, hf.down_proj, weights, ids),
            }
            times: dict[str, list[float]] = {name: [] for name in systems}
            with torch.inference_mode():
                for run in systems.values():
                    run()  # warm-up
                for _ in range(args.repeats):
                    for name, run in systems.items():
                        start = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - start)
            hf_ms, folo_ms = (statistics.median(times[n]) * 1e3 for n in ("hf", "folo"))
            print(f"| {dtype_name} | {tokens} | {hf_ms:.2f} | {folo_ms:.2f} | {hf_ms / folo_ms:.2f}x |")


if __name__ == "__main__":
    main()
