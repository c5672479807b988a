"""One system's pass over a compare.py workload file, in a process of its own.

    python benchmarks/peers/worker.py WORKLOADS.json   # prints "RESULT {json}"

Standalone on purpose: the vLLM system runs it with the Python of vLLM's own
venv, where Folo is not installed, so Folo is imported only for ``folo``.
Timed parts exclude model loading, compilation and a warm-up request.
"""

from __future__ import annotations

import json
import sys
import time


def folo(spec: dict) -> dict:
    from folo_core import LLM, SamplingParams

    llm = LLM(spec["model"], dtype=spec["dtype"], skip_tokenizer_init=True, max_model_len=2048)
    llm.generate([{"prompt_token_ids": [100] * 8}], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    results = {}
    for w in spec["workloads"]:
        params = [SamplingParams(temperature=0.0 if w["greedy"] else 1.0, max_tokens=n, ignore_eos=True)
                  for n in w["output_lens"]]
        prompts = [{"prompt_token_ids": p} for p in w["prompts"]]
        if w["kind"] == "latency":
            results[w["name"]] = folo_latency(llm, prompts[0], params[0])
            continue
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        results[w["name"]] = {"elapsed": time.perf_counter() - start}
        assert [len(o.outputs[0].token_ids) for o in outputs] == w["output_lens"]
    return results


def folo_latency(llm, prompt: dict, params) -> dict:
    engine = llm.llm_engine
    start = time.perf_counter()
    engine.add_request("latency", prompt, params)
    ttft = None
    while engine.has_unfinished_requests():
        outputs = engine.step()
        if ttft is None and any(o.outputs[0].token_ids for o in outputs):
            ttft = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "ttft": ttft, "tpot": (elapsed - ttft) / (params.max_tokens - 1)}


def hf_generate_fn(model_path: str, dtype: str):
    """``generate(ids, mask, new_tokens, greedy)`` over an HF model: exactly ``new_tokens`` each."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()

    def generate(ids: torch.Tensor, mask: torch.Tensor, new: int, greedy: bool) -> None:
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=not greedy,
                       temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0)

    return generate


def hf(spec: dict) -> dict:
    import torch

    generate = hf_generate_fn(spec["model"], spec["dtype"])
    results = {}
    with torch.inference_mode():
        generate(torch.full((1, 8), 100), torch.ones(1, 8, dtype=torch.long), 4, True)
        for w in spec["workloads"]:
            if w["kind"] == "varlen":
                results[w["name"]] = {"elapsed": hf_varlen(w, generate)}
                continue
            ids = torch.tensor(w["prompts"])  # equal lengths: no padding
            mask = torch.ones_like(ids)
            new = w["output_lens"][0]
            start = time.perf_counter()
            if w["kind"] == "latency":
                generate(ids, mask, 1, True)
                ttft = time.perf_counter() - start
                start = time.perf_counter()
            generate(ids, mask, new, True)
            elapsed = time.perf_counter() - start
            results[w["name"]] = {"elapsed": elapsed}
            if w["kind"] == "latency":
                results[w["name"]].update(ttft=ttft, tpot=(elapsed - ttft) / (new - 1))
    return results


def hf_varlen(w: dict, generate, batch_size: int = 16, progress=lambda batches: batches) -> float:
    """HF's best batching: requests sorted by length, left-padded batches, each batch generating
    its longest output, sampled (``w["greedy"]`` false) or greedy."""
    import torch

    order = sorted(zip(w["prompts"], w["output_lens"]), key=lambda r: (len(r[0]), r[1]))
    start = time.perf_counter()
    for i in progress(range(0, len(order), batch_size)):
        batch = order[i:i + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (p, _) in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        generate(ids, mask, max(o for _, o in batch), w["greedy"])
    return time.perf_counter() - start


def vllm(spec: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(spec["model"], dtype=spec["dtype"], max_model_len=2048, skip_tokenizer_init=True, seed=0)
    llm.generate([TokensPrompt(prompt_token_ids=[100] * 8)], SamplingParams(max_tokens=4, ignore_eos=True),
                 use_tqdm=False)
    results = {}
    for w in spec["workloads"]:
        params = [SamplingParams(temperature=0.0 if w["greedy"] else 1.0, max_tokens=n, ignore_eos=True,
                                 detokenize=False) for n in w["output_lens"]]
        prompts = [TokensPrompt(prompt_token_ids=p) for p in w["prompts"]]
        start = time.perf_counter()
        if w["kind"] == "latency":
            one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
            llm.generate(prompts, one, use_tqdm=False)
            ttft = time.perf_counter() - start
            start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        results[w["name"]] = {"elapsed": elapsed}
        if w["kind"] == "latency":
            new = w["output_lens"][0]
            results[w["name"]].update(ttft=ttft, tpot=(elapsed - ttft) / (new - 1))
    return results


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    import torch

    torch.set_num_threads(spec["threads"])
    results = {"folo": folo, "hf": hf, "vllm": vllm}[spec["system"]](spec)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
