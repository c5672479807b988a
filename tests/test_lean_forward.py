"""The eager forward stays lean: a bounded number of aten calls per decoder layer in a decode step.

Python dispatch is a large share of a CPU decode step (each aten call costs a few
microseconds before any kernel runs), so the op count is a budget. Counted are the
aten calls the model code issues (top-level profiler events; the ops a kernel runs
inside itself are the kernel's business), per layer as the difference between
models of 4 and 8 layers, so per-step work (embedding, rotary lookup, final norm)
is not spread over the layers.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from folo_core import SamplingParams
from folo_core.engine.llm_engine import LLMEngine
from helpers import build_tiny_model

MAX_ATEN_CALLS_PER_LAYER = 40


def aten_calls_in_decode_forward(model_dir, num_requests: int) -> int:
    engine = LLMEngine.from_engine_args(model=str(model_dir), skip_tokenizer_init=True, dtype="float32",
                                        enforce_eager=True)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    for i in range(num_requests):
        engine.add_request(str(i), {"prompt_token_ids": list(range(10 + i, 30 + i))}, params)
    engine.step()  # the prefill
    model = engine.engine_core.executor.model_runner.model
    forward = model.forward
    events = []

    def profiled(*args):
        with profile() as prof:
            out = forward(*args)
        events.extend(prof.events())
        return out

    model.forward = profiled
    engine.step()  # one decode step
    assert events, "the decode step did not run the model"

    def top_level(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    return sum(1 for e in events if e.name.startswith("aten::") and top_level(e))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("num_requests", [1, 3])
def test_decode_aten_calls_per_layer(kind, num_requests, tmp_path):
    counts = {}
    for layers in (4, 8):
        model_dir = build_tiny_model(kind, tmp_path / f"{kind}-{layers}", num_hidden_layers=layers)
        counts[layers] = aten_calls_in_decode_forward(model_dir, num_requests)
    per_layer = (counts[8] - counts[4]) / 4
    assert 0 < per_layer <= MAX_ATEN_CALLS_PER_LAYER, f"{per_layer} aten calls per layer ({counts})"
