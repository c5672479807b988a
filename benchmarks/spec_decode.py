"""Speculative decoding (n-gram prompt lookup): TPOT with and without, and the acceptance rate.

    python benchmarks/spec_decode.py --batch-sizes 1 8 --num-speculative-tokens 4 --repeats 3

Two workloads on the embedded SmolLM2 (or ``--model``), ``--output-len`` tokens per
request:

- ``repeat`` (greedy): prompts that hold a passage of Python's own ``textwrap.py`` (a
  real text file of the standard library) and begin a copy of it, where output
  follows the prompt and drafts get accepted;
- ``random``: random token prompts sampled at temperature 1 (EOS ignored), where
  the proposer should find nothing and cost nothing (greedy decoding of random
  prompts makes the model loop, which the proposer does find).

One engine with speculation and one without live in the process (compiled once
each); runs alternate between them, ``--repeats`` times per configuration, and
the report gives median TPOT (time per output token after the first, averaged
over a run's requests; N=1 runs 8 prompts one at a time), the ratio, and the acceptance rate and mean acceptance
length of the speculative runs.
"""

from __future__ import annotations

import argparse
import statistics
import textwrap
from pathlib import Path

import numpy as np

from folo_core import LLM, SamplingParams
from folo_core.default_model import default_model_path
from folo_core.platform import cpu_isa_summary


def repeat_prompts(llm: LLM, n: int, passage_chars: int) -> list[dict]:
    """Completion prompts that hold a passage of textwrap.py and then begin it again: the
    continuation copies the passage (as code edits and quotes do). Asked in a chat to repeat
    text, the 135M default model paraphrases instead; a prompt that starts the copy is how an
    editing tool would ask."""
    source = Path(textwrap.__file__).read_text()
    tokenizer = llm.get_tokenizer()
    prompts = []
    for i in range(n):
        start = source.find("\n", (i * 997) % max(1, len(source) - passage_chars)) + 1  # at a line start
        passage = source[start:start + passage_chars]
        text = passage + "\n" + passage[:passage_chars // 4]
        prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
    return prompts


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt_token_ids": rng.integers(100, vocab - 100, length).tolist()} for _ in range(n)]


def run(llm: LLM, prompts: list[dict], batch_size: int, params: SamplingParams) -> float:
    """Mean TPOT (s) over the requests, run ``batch_size`` at a time (so N=1 still sees
    several passages)."""
    tpots = []
    for start in range(0, len(prompts), batch_size):
        for o in llm.generate(prompts[start:start + batch_size], params, use_tqdm=False):
            n, m = len(o.outputs[0].token_ids), o.metrics
            if n > 1:
                tpots.append((m.last_token_time - m.first_token_time) / (n - 1))
    return statistics.mean(tpots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--passage-chars", type=int, default=600)
    parser.add_argument("--random-len", type=int, default=256)
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()

    model = args.model or default_model_path()
    spec = {"method": "ngram", "num_speculative_tokens": args.num_speculative_tokens}
    engines = {"off": LLM(model, enforce_eager=args.enforce_eager),
               "on": LLM(model, enforce_eager=args.enforce_eager, speculative_config=spec)}
    vocab = engines["off"].llm_engine.config.model.hf_config.vocab_size
    print(f"CPU {cpu_isa_summary()}; {model}; speculative_config={spec}; output {args.output_len} tokens")
    print("| workload | N | TPOT off (ms) | TPOT on (ms) | off / on | acceptance rate | mean acceptance length |")
    print("|---|---|---|---|---|---|---|")
    for workload in ("repeat", "random"):
        for n in args.batch_sizes:
            num = max(n, 8)  # N=1 runs 8 passages one after another
            if workload == "repeat":
                prompts = repeat_prompts(engines["off"], num, args.passage_chars)
                params = SamplingParams(temperature=0, max_tokens=args.output_len)
            else:
                prompts = random_prompts(num, args.random_len, vocab, seed=n)
                params = SamplingParams(temperature=1.0, max_tokens=args.output_len, ignore_eos=True)
            for llm in engines.values():  # warm-up: first-use costs out of the timed runs
                llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)
            tpot = {"off": [], "on": []}
            stats = engines["on"].llm_engine.engine_core.scheduler.spec_decoding_stats
            drafts_before, accepted_before, steps_before = (stats.num_draft_tokens, stats.num_accepted_tokens,
                                                            stats.num_drafts)
            for _ in range(args.repeats):
                for name, llm in engines.items():
                    tpot[name].append(run(llm, prompts, n, params))
            off, on = statistics.median(tpot["off"]), statistics.median(tpot["on"])
            drafts = stats.num_draft_tokens - drafts_before
            accepted = stats.num_accepted_tokens - accepted_before
            steps = stats.num_drafts - steps_before
            rate = f"{accepted / drafts:.2f}" if drafts else "no drafts"
            length = f"{1 + accepted / steps:.2f}" if steps else "-"
            print(f"| {workload} | {n} | {off * 1e3:.1f} | {on * 1e3:.1f} | {off / on:.2f}x | {rate} | {length} |",
                  flush=True)


if __name__ == "__main__":
    main()
