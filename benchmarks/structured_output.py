"""The cost of structured output per decode step: filling the grammars' bitmask and applying it.

    python benchmarks/structured_output.py --batch-sizes 1 32 --steps 200

For each backend and batch size N: N requests with the same JSON schema, each
advanced to the middle of the object; then per "step" every grammar fills its row
of the bitmask (``StructuredOutputManager.grammar_bitmask``), the mask is applied
to float32 logits of the model's vocabulary (``apply_token_bitmask``, compiled as
in a compiled engine and eager as under ``enforce_eager``), and each
grammar accepts a token its mask allows and rolls it back. Prints the medians in
ms per step, with the CPU's ISA; the embedded SmolLM2's tokenizer (49,152 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from folo_core.config import EngineConfig
from folo_core.default_model import default_model_path
from folo_core.hf_utils import load_hf_config, load_tokenizer
from folo_core.platform import cpu_isa_summary
from folo_core.plugins import get_plugin_manager
from folo_core.registry import SelectionContext
from folo_core.sampling_params import StructuredOutputsParams
from folo_core.structured_output.bitmask import apply_token_bitmask
from folo_core.structured_output.manager import StructuredOutputManager

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "tags", "score"],
          "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                         "score": {"type": "integer", "minimum": 0, "maximum": 100}}}
PREFIX = '{"name": "Ada", "tags": ["x'  # inside a string inside an array: a large allowed set


def time_backend(manager: StructuredOutputManager, name: str, batch: int, steps: int,
                 compiled: bool) -> tuple[float, float]:
    manager.backend_name = name
    params = StructuredOutputsParams(json=SCHEMA)
    prefix = manager.tokenizer.encode(PREFIX, add_special_tokens=False)
    grammars = {}
    for i in range(batch):
        grammar = manager.grammar_init(params).future.result()
        assert grammar.accept_tokens(prefix)
        grammars[str(i)] = grammar
    logits = torch.randn(batch, manager.vocab_size)
    rows = torch.arange(batch)
    fill, apply = [], []
    for _ in range(steps):
        start = time.perf_counter()
        _, bitmask = manager.grammar_bitmask(grammars, {})
        middle = time.perf_counter()
        apply_token_bitmask(logits.clone(), bitmask, rows, compiled)
        fill.append(middle - start)
        apply.append(time.perf_counter() - middle)
        for grammar in grammars.values():  # move, as a step does, without drifting out of the string
            assert grammar.accept_tokens([prefix[-1]])
            grammar.rollback(1)
    return statistics.median(fill) * 1e3, statistics.median(apply) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backends", nargs="+", default=["guidance", "xgrammar"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = default_model_path()
    config = load_hf_config(path)
    manager = StructuredOutputManager(get_plugin_manager().registry("structured_output_backend"),
                                      EngineConfig().model.structured_outputs_backend, SelectionContext(),
                                      load_tokenizer(path), config.vocab_size)
    print(f"CPU {cpu_isa_summary()}, {torch.get_num_threads()} threads, vocab {config.vocab_size}")
    print("| backend | N | fill bitmask (ms/step) | apply, compiled (ms/step) | apply, eager (ms/step) | total, compiled |")
    print("|---|---|---|---|---|---|")
    for name in args.backends:
        for batch in args.batch_sizes:
            fill, apply = time_backend(manager, name, batch, args.steps, compiled=True)
            _, eager = time_backend(manager, name, batch, args.steps, compiled=False)
            print(f"| {name} | {batch} | {fill:.3f} | {apply:.3f} | {eager:.3f} | {fill + apply:.3f} |")
    manager.shutdown()


if __name__ == "__main__":
    main()
