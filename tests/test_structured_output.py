"""Structured output with both built-in backends, against real tokenizers.

The shared suite (``folo_core.testing.check_structured_outputs``: 50 random JSON
schemas, regexes, choices, a Lark grammar, ``json_object``) runs on the real
SmolLM2 and on a random Qwen3 with the real Qwen3 tokenizer, for each backend.
"""

from __future__ import annotations

import json
import threading
import time
import types

import pytest
import torch

from folo_core import LLM, SamplingParams, StructuredOutputsParams
from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.hookspecs import hookimpl
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.engine.errors import EngineStepError
from folo_core.request import RequestStatus
from folo_core.testing import check_structured_outputs
from folo_plugins.guidance.backend import GuidanceBackend

BACKENDS = ["guidance", "xgrammar"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def smollm2(smollm2_path) -> LLM:
    return LLM(smollm2_path, max_model_len=1024)


@pytest.fixture(scope="module")
def qwen3(tiny_chat_model_dir) -> LLM:
    return LLM(str(tiny_chat_model_dir), max_model_len=1024)


def use_backend(llm: LLM, name: str) -> LLM:
    llm.llm_engine.engine_core.structured_output_manager.backend_name = name
    return llm


def test_suite_on_smollm2(smollm2, backend):
    check_structured_outputs(use_backend(smollm2, backend), num_schemas=50, seed=1)


def test_suite_on_random_qwen3_with_the_real_tokenizer(qwen3, backend):
    check_structured_outputs(use_backend(qwen3, backend), num_schemas=50, seed=2)


@pytest.mark.parametrize("text,accepted", [('{"kind": "a b", "tags": ["xy"]}', True),
                                           ('{"kind": "a\tb", "tags": ["xy"]}', False),
                                           ('{"kind": "ab", "tags": ["x\u0001"]}', False),
                                           ('{"kind": "abcdef", "tags": []}', False)])
def test_length_bounded_json_strings_exclude_control_characters(text, accepted):
    """xgrammar's own minLength/maxLength strings admit a raw tab (a sampled one broke the suite on
    an AVX2 CPU); the backend's grammar keeps JSON's rule: no control characters in a string."""
    pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string
    from folo_plugins.xgrammar.backend import XgrammarBackend

    schema = {"type": "object", "properties": {"kind": {"type": "string", "maxLength": 5},
                                               "tags": {"type": "array", "items": {"type": "string", "minLength": 2}}},
              "required": ["kind", "tags"], "additionalProperties": False}
    params = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    assert _is_grammar_accept_string(XgrammarBackend.grammar(params), text) is accepted


def test_json_object_on_smollm2(smollm2, backend):
    out = use_backend(smollm2, backend).chat(
        [{"role": "user", "content": 'Answer with {"capital": <the capital of France>}.'}],
        SamplingParams(temperature=0, max_tokens=200, structured_outputs=StructuredOutputsParams(
            json_object=True, disable_any_whitespace=True)),
        use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict), out.text


@pytest.mark.parametrize("so, needle", [
    (StructuredOutputsParams(json={"type": "objec"}), "invalid json"),
    (StructuredOutputsParams(json="{not json"), "invalid json"),
    (StructuredOutputsParams(regex="[a-"), "invalid regex"),
    (StructuredOutputsParams(grammar="start: ((("), "invalid grammar"),
])
def test_broken_specs_fail_at_generate_naming_the_problem(qwen3, backend, so, needle):
    with pytest.raises(ValueError, match=needle):
        use_backend(qwen3, backend).generate("x", SamplingParams(max_tokens=4, structured_outputs=so), use_tqdm=False)
    assert not qwen3.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one of"),
    (dict(json={}, regex="a"), "exactly one of json, regex, choice, grammar, json_object; got json, regex"),
    (dict(choice=[]), "non-empty list of strings"),
    (dict(regex=""), "non-empty string"),
])
def test_structured_outputs_params_take_exactly_one_constraint(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredOutputsParams(**kwargs)


def test_masked_tokens_are_never_sampled_whatever_the_sampling(qwen3, backend):
    """Penalties, temperature, top-k/p and min-p apply after the mask: still only the choices."""
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, repetition_penalty=1.5, presence_penalty=1.0, seed=i,
                             max_tokens=16, structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
              for i, (t, k, p) in enumerate([(2.0, 0, 1.0), (1.0, 5, 0.5), (0.0, 0, 1.0), (1.5, 50, 0.9)])]
    outputs = use_backend(qwen3, backend).generate(["Is it?"] * len(params), params, use_tqdm=False)
    assert all(o.outputs[0].text in ("yes", "no") and o.outputs[0].finish_reason == "stop" for o in outputs)


def test_a_slow_grammar_does_not_delay_other_requests(qwen3, monkeypatch):
    gate = threading.Event()
    original = GuidanceBackend.compile_grammar

    def slow_compile(self, params):
        gate.wait(30)  # compiling takes until the test says so
        return original(self, params)

    monkeypatch.setattr(GuidanceBackend, "compile_grammar", slow_compile)
    engine = use_backend(qwen3, "guidance").llm_engine
    engine.add_request("slow", "x", SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(
        regex="[a-z]{3}")))
    engine.add_request("plain", "x", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    start = time.monotonic()
    finished = {}
    while "plain" not in finished:
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert engine.engine_core.scheduler.requests["slow"].status == RequestStatus.WAITING_FOR_FSM
    assert time.monotonic() - start < 20
    gate.set()
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert len(finished["slow"].outputs[0].text) == 3


def test_a_grammar_that_fails_to_compile_fails_its_request_alone(qwen3, monkeypatch):
    def broken(self, params):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(GuidanceBackend, "compile_grammar", broken)
    params = [SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="[a-z]+")),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)]
    with pytest.raises(EngineStepError, match="1 of 2 request.*compiler exploded") as info:
        use_backend(qwen3, "guidance").generate(["a", "b"], params, use_tqdm=False)
    failed, ok = info.value.outputs
    assert failed.outputs[0].finish_reason == "error"
    assert ok.outputs[0].finish_reason == "length" and len(ok.outputs[0].token_ids) == 4
    assert qwen3.llm_engine.get_stats().kv_cache_usage == 0.0


def test_n_greater_than_one_gives_each_choice_its_grammar(qwen3):
    so = StructuredOutputsParams(choice=["alpha", "beta", "gamma"])
    out = use_backend(qwen3, "guidance").generate("x", SamplingParams(n=4, temperature=1.5, seed=3, max_tokens=8,
                                                                       structured_outputs=so), use_tqdm=False)[0]
    assert len(out.outputs) == 4 and all(c.text in so.choice for c in out.outputs)


class _OnlyJson(GuidanceBackend):
    @classmethod
    def unsupported(cls, params):
        return None if params.kind == "json" else "only JSON schemas"


def test_auto_picks_per_request_what_supports_it(tiny_chat_model_dir):
    """``auto`` takes the highest-priority eligible backend that supports the request's kind."""
    module = types.ModuleType("only_json_plugin")

    @hookimpl
    def register_structured_output_backends(register):
        register("only_json", _OnlyJson, priority=1000)

    module.register_structured_output_backends = register_structured_output_backends
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(module, PluginInfo("only_json_plugin"))
    engine = LLMEngine(EngineConfig.from_kwargs(model=str(tiny_chat_model_dir), max_model_len=256), plugins=manager)
    so_manager = engine.engine_core.structured_output_manager
    assert so_manager.select_backend(StructuredOutputsParams(json={"type": "object"})) == "only_json"
    assert so_manager.select_backend(StructuredOutputsParams(regex="a+")) == "guidance"
    so_manager.backend_name = "only_json"
    with pytest.raises(ValueError, match="'only_json' cannot take this request: only JSON schemas"):
        so_manager.select_backend(StructuredOutputsParams(regex="a+"))


@pytest.mark.parametrize("compiled", [False, True])
def test_apply_token_bitmask_matches_the_bits(compiled):
    from folo_core.structured_output.bitmask import apply_token_bitmask

    gen = torch.Generator().manual_seed(0)
    vocab = 100  # 4 words cover 128 tokens; a 3-word mask leaves tokens 96.. banned
    logits = torch.randn(5, vocab, generator=gen)
    bitmask = torch.randint(-2**31, 2**31 - 1, (2, 3), dtype=torch.int32, generator=gen)
    rows = torch.tensor([3, 1])
    out = logits.clone()
    apply_token_bitmask(out, bitmask, rows, compiled=compiled)
    for r in range(5):
        for t in range(vocab):
            if r in (1, 3):
                word = int(bitmask[rows.tolist().index(r), t // 32]) if t < 96 else 0
                allowed = bool((word >> (t % 32)) & 1)
            else:
                allowed = True
            assert (out[r, t] == logits[r, t]) if allowed else out[r, t] == float("-inf"), (r, t)


def test_rollback_restores_the_mask(qwen3, backend):
    """Speculative decoding will accept draft tokens and roll back the rejected ones."""
    from folo_core.structured_output.bitmask import allocate_token_bitmask

    manager = use_backend(qwen3, backend).llm_engine.engine_core.structured_output_manager
    grammar = manager.grammar_init(StructuredOutputsParams(regex="(abc|abd)[0-9]")).future.result()
    tokenizer = qwen3.get_tokenizer()
    before = allocate_token_bitmask(1, manager.vocab_size)
    grammar.fill_bitmask(before, 0)
    tokens = [tokenizer.convert_tokens_to_ids(c) for c in "ab"]
    assert grammar.accept_tokens(tokens)
    after = allocate_token_bitmask(1, manager.vocab_size)
    grammar.fill_bitmask(after, 0)
    assert not torch.equal(before, after)
    grammar.rollback(len(tokens))
    again = allocate_token_bitmask(1, manager.vocab_size)
    grammar.fill_bitmask(again, 0)
    assert torch.equal(before, again)


def test_suite_under_preemption(tiny_chat_model_dir):
    """Grammars live with their requests: preempted and recomputed requests still complete validly."""
    llm = LLM(str(tiny_chat_model_dir), max_model_len=512, num_gpu_blocks_override=24, block_size=16)
    check_structured_outputs(llm, num_schemas=20, seed=5)
    assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0
