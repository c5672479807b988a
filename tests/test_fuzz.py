"""Fuzzing, with bounded budgets: neither the server nor ``LLM.generate`` can be made to fail badly.

- schemathesis generates valid and invalid bodies for every operation of the running
  server's ``/openapi.json``: no answer is a 5xx, and the server keeps answering with no
  request or KV block left behind;
- hypothesis draws ``SamplingParams`` (and prompts) from far outside the valid ranges:
  ``LLM.generate`` either raises ``ValueError`` before anything runs or returns a result,
  and never leaks a block.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis import GenerationMode

from folo_core import LLM, SamplingParams
from test_server import IN_PROCESS, MODEL, idle, running_server, wait_for_metrics

EXAMPLES_PER_OPERATION = 25  # per generation mode: about a minute for the whole API


@pytest.fixture(scope="module")
def fuzz_server(tiny_chat_model_dir, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    # A short model length keeps any fuzzed max_tokens cheap.
    with running_server(tiny_chat_model_dir, log, IN_PROCESS, "--max-model-len", "96") as url:
        yield url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz_gets_no_server_errors(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[tuple[str, int]] = Counter()
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    if mode == GenerationMode.NEGATIVE:  # only bodies can be invalid: GET routes take no input
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case) -> None:
            response = case.call(base_url=fuzz_server, timeout=120)
            statuses[(operation.path, response.status_code)] += 1
            assert response.status_code < 500, f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:400]}"

        call()
    assert httpx.get(f"{fuzz_server}/health").status_code == 200
    ok = httpx.post(f"{fuzz_server}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert ok.status_code == 200, ok.text
    wait_for_metrics(fuzz_server, idle)
    if mode == GenerationMode.POSITIVE:  # the valid bodies did reach the engine
        assert statuses["/v1/completions", 200] + statuses["/v1/chat/completions", 200] > 0, statuses


@pytest.fixture(scope="module")
def llm(tiny_model_dir) -> LLM:
    return LLM(str(tiny_model_dir("llama")), skip_tokenizer_init=True, max_model_len=48, num_gpu_blocks_override=16,
               block_size=4)


def _anything(ints: st.SearchStrategy) -> st.SearchStrategy:
    """Valid-looking values, values far out of range, and values of the wrong type."""
    return st.one_of(ints, st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True))


_BIG = st.one_of(st.integers(-3, 40), st.integers(-(2**70), 2**70))
_UNIT = st.one_of(st.floats(-0.5, 1.5), st.floats(allow_nan=True, allow_infinity=True))

sampling_kwargs = st.fixed_dictionaries({}, optional={
    "n": _anything(st.integers(-1, 3)),
    "temperature": st.one_of(_UNIT, st.floats(0, 5)),
    "top_p": _UNIT,
    "top_k": _anything(_BIG),
    "min_p": _UNIT,
    "presence_penalty": st.floats(-3, 3),
    "frequency_penalty": st.floats(-3, 3),
    "repetition_penalty": st.one_of(st.floats(-1, 3), st.just(math.inf)),
    "seed": _anything(_BIG),
    "max_tokens": _anything(_BIG),
    "min_tokens": _anything(_BIG),
    "logprobs": _anything(_BIG),
    "stop_token_ids": st.one_of(st.none(), st.text(max_size=3), st.lists(_BIG, max_size=3)),
    "stop": st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=2), max_size=2), st.integers()),
    "ignore_eos": st.booleans(),
})

prompts = st.one_of(
    st.lists(st.integers(0, 511), min_size=1, max_size=30).map(lambda ids: {"prompt_token_ids": ids}),
    st.lists(st.integers(-5, 600), max_size=60).map(lambda ids: {"prompt_token_ids": ids}),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=sampling_kwargs, prompt=prompts)
def test_generate_fuzz_raises_value_error_or_returns_and_leaks_nothing(llm, kwargs, prompt):
    engine = llm.llm_engine
    try:
        params = SamplingParams(**kwargs)
    except ValueError:
        return
    try:
        outputs = llm.generate([prompt, {"prompt_token_ids": [1, 2, 3]}], params, use_tqdm=False)
    except ValueError:
        assert not engine.has_unfinished_requests()  # refused before anything ran
    else:
        for output in outputs:
            assert len(output.outputs) == params.n
            assert all(c.finish_reason in ("stop", "length") for c in output.outputs)
    assert not engine.has_unfinished_requests()
    assert engine.get_stats().kv_cache_usage == 0.0
