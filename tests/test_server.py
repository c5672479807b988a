"""``folo serve`` as a real subprocess on a free localhost port, driven by the openai client and httpx."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny-qwen3"
API_KEY = "sk-folo-test"
ENGINE_FLAGS = ["--max-model-len", "1024", "--num-gpu-blocks-override", "512"]
# Servers whose tests are about the HTTP layer keep the engine core on the server's thread (about
# 4 s less start-up each); the default core process is served by ``server`` below, the SIGTERM
# test and the data-parallel server.
IN_PROCESS = "--engine-core-in-process"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, log_path: Path, *flags: str) -> Iterator[str]:
    with server_process(model_dir, log_path, *flags) as (_, base_url):
        yield base_url


@contextmanager
def server_process(model_dir: Path, log_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``folo serve`` on a free port, healthy; yields the process and its base URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "folo_core.entrypoints.cli", "serve", "--model", str(model_dir),
           "--port", str(port), "--served-model-name", MODEL, "--uvicorn-log-level", "warning", *ENGINE_FLAGS, *flags]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "FOLO_LOGGING_LEVEL": "WARNING"})
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"folo serve exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"folo serve not healthy in time:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield proc, base_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir, tmp_path_factory) -> Iterator[str]:
    with running_server(tiny_chat_model_dir, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def guarded_server(tiny_chat_model_dir, tmp_path_factory) -> Iterator[str]:
    """API key on, one running request at most and one waiting: easy to overload."""
    log = tmp_path_factory.mktemp("serve-guarded") / "server.log"
    with running_server(tiny_chat_model_dir, log, IN_PROCESS, "--api-key", API_KEY, "--max-num-seqs", "1",
                        "--max-waiting-requests", "1") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))


def parse_metrics(text: str) -> dict[tuple[str, str | None], float]:
    """``{(sample name, finished_reason label): value}`` of a ``/metrics`` page (histogram buckets left out)."""
    return {(s.name, s.labels.get("finished_reason")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.labels.get("le") is None}


def scrape(base_url: str) -> dict[tuple[str, str | None], float]:
    return parse_metrics(httpx.get(f"{base_url}/metrics").text)


def wait_for_metrics(base_url: str, condition, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(metrics := scrape(base_url)):
        assert time.monotonic() < deadline, f"metrics never matched: {metrics}"
        time.sleep(0.05)
    return metrics


def idle(metrics: dict) -> bool:
    return (metrics[("folo:num_requests_running", None)] == 0 and metrics[("folo:num_requests_waiting", None)] == 0
            and metrics[("folo:kv_cache_usage_perc", None)] == 0)


def test_health_and_models(server):
    assert httpx.get(f"{server}/health").status_code == 200
    models = httpx.get(f"{server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 1024


def test_completion_stream_equals_full_text_and_usage_is_right(client, tokenizer):
    prompt = "The quick brown fox jumps over"
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    n_prompt = len(tokenizer(prompt).input_ids)
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == \
        (n_prompt, 20, n_prompt + 20)
    assert full.choices[0].finish_reason == "length" and full.choices[0].text

    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    assert len(text_chunks) > 1
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in text_chunks)
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage


def test_chat_stream_equals_full_text_and_usage_is_right(client, tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]
    kwargs = dict(model=MODEL, messages=messages, max_completion_tokens=16, temperature=0,
                  extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kwargs)
    n_prompt = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (n_prompt, 16)
    assert full.choices[0].message.role == "assistant" and full.choices[0].finish_reason == "length"

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage == full.usage


def test_stop_strings_and_token_id_prompts(client):
    prompt_ids = [785, 3974, 13876, 38835]
    base = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True})
    text = base.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    stopped = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=20, temperature=0, stop=[stop],
                                        extra_body={"ignore_eos": True})
    assert base.usage.prompt_tokens == len(prompt_ids)
    assert stopped.choices[0].text == text[:text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_n_choices_streamed_and_whole(client):
    kwargs = dict(model=MODEL, prompt="Pick a number:", max_tokens=8, temperature=1.0, seed=7, n=2,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    assert [c.index for c in full.choices] == [0, 1]
    assert full.usage.completion_tokens == 2 * 8
    texts = ["", ""]
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in full.choices]

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=3,
                                          max_tokens=4, temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert [c.index for c in chat.choices] == [0, 1, 2] and chat.usage.completion_tokens == 3 * 4


def test_logprobs(client):
    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, logprobs=3,
                                           extra_body={"ignore_eos": True})
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == completion.choices[0].text
    for sampled, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and sampled == pytest.approx(max(top.values()))  # greedy picks the top token

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_32_concurrent_streaming_clients_get_their_own_outputs(server, client):
    prompts = [f"Request {i}: " + "word " * (i % 7) + f"topic {i * 37}" for i in range(32)]
    expected = [client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text for p in prompts]
    assert len(set(expected)) > 16, "prompts should give different continuations"

    async def stream_one(aclient: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0,
                                                  stream=True, extra_body={"ignore_eos": True})
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0,
                                      timeout=120) as aclient:
            return await asyncio.gather(*[stream_one(aclient, p) for p in prompts])

    assert asyncio.run(main()) == expected
    wait_for_metrics(server, idle)


def test_client_that_disconnects_has_its_request_aborted(server):
    before = wait_for_metrics(server, idle)
    aborted = before.get(("folo:request_success_total", "abort"), 0)
    body = {"model": MODEL, "prompt": "Tell me a long story", "max_tokens": 900, "ignore_eos": True}

    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    after = wait_for_metrics(server, lambda m: idle(m) and m.get(("folo:request_success_total", "abort"), 0) > aborted)
    assert after[("folo:request_success_total", "abort")] == aborted + 1

    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        httpx.post(f"{server}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    after = wait_for_metrics(server, lambda m: idle(m) and m[("folo:request_success_total", "abort")] > aborted + 1)
    assert after[("folo:request_success_total", "abort")] == aborted + 2


BAD_REQUESTS = [
    # (path, body, status, param, code)
    ("/v1/completions", b'{"prompt": "hi", ', 400, None, "invalid_json"),
    ("/v1/completions", b"[1, 2]", 400, None, "invalid_request_body"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt", "missing_required_parameter"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "stop": 5}, 400, "stop", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs", "invalid_value"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options",
     "invalid_value"),
    ("/v1/completions", {"prompt": "hi", "min_tokens": 9, "max_tokens": 3}, 400, None, "invalid_value"),
    ("/v1/completions", {"prompt": [10 ** 9]}, 400, None, "invalid_value"),
    ("/v1/completions", {"prompt": [7] * 1100}, 400, None, "invalid_value"),  # longer than max_model_len
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     "top_logprobs", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "tools.0.function", "missing_required_parameter"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model",
     "model_not_found"),
    ("/v1/nothing-here", {}, 404, None, "not_found"),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    good = {"model": MODEL, "prompt": "Hello", "max_tokens": 3}
    with httpx.Client(base_url=server, timeout=30) as http:
        for path, body, status, param, code in BAD_REQUESTS:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post(path, content=content, headers={"Content-Type": "application/json"})
            case = f"{path} {content[:60]!r}"
            assert response.status_code == status, f"{case}: {response.text}"
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, case
            assert (error["param"], error["code"]) == (param, code), f"{case}: {error}"
            assert error["message"] and error["type"] == "invalid_request_error", case
            after = http.post("/v1/completions", json=good)
            assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3, case


def test_metrics_parse_and_counters_move(server, tokenizer):
    before = wait_for_metrics(server, idle)
    prompt = "Counting tokens for the metrics"
    httpx.post(f"{server}/v1/completions", timeout=30,
               json={"model": MODEL, "prompt": prompt, "max_tokens": 7, "ignore_eos": True}).raise_for_status()
    after = scrape(server)  # counted before the response left the engine

    def moved(name: str, label: str | None = None) -> float:
        return after[(name, label)] - before.get((name, label), 0)

    assert moved("folo:prompt_tokens_total") == len(tokenizer(prompt).input_ids)
    assert moved("folo:generation_tokens_total") == 7
    assert moved("folo:time_to_first_token_seconds_count") == 1
    assert moved("folo:time_per_output_token_seconds_count") == 6
    assert moved("folo:e2e_request_latency_seconds_count") == 1
    assert moved("folo:request_success_total", "length") == 1
    assert moved("folo:prefix_cache_queries_total") > 0
    assert 0.0 <= after[("folo:prefix_cache_hit_rate", None)] <= 1.0


def test_api_key(guarded_server):
    url = f"{guarded_server}/v1/models"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(f"{guarded_server}/health").status_code == 200  # probes need no key, as in vLLM
    keyed = openai.OpenAI(base_url=f"{guarded_server}/v1", api_key=API_KEY, max_retries=0)
    assert keyed.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded_server}/v1", api_key="bad", max_retries=0).models.list()


def test_overloaded_server_answers_503_and_recovers(guarded_server):
    """max_num_seqs=1, max_waiting_requests=1: one running, one waiting, the third is turned away."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long = {"model": MODEL, "prompt": "Go on and on", "max_tokens": 900, "ignore_eos": True, "stream": True}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=guarded_server, headers=headers, timeout=60) as http:
            async with http.stream("POST", "/v1/completions", json=long) as running:
                lines = running.aiter_lines()  # kept open: closing it would disconnect (and abort)
                assert (await anext(lines)).startswith("data: ")  # it holds the only running slot now
                waiting = asyncio.create_task(http.post("/v1/completions", json={**long, "stream": False}))
                deadline = time.monotonic() + 30
                while parse_metrics((await http.get("/metrics")).text)[("folo:num_requests_waiting", None)] != 1:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                rejected = await http.post("/v1/completions", json={**long, "stream": False})
                assert rejected.status_code == 503
                assert rejected.json()["error"]["code"] == "overloaded"
                waiting.cancel()
        wait_for_metrics(guarded_server, idle)
        async with httpx.AsyncClient(base_url=guarded_server, headers=headers, timeout=60) as http:
            ok = await http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert ok.status_code == 200

    asyncio.run(main())


def test_benchmark_script_runs_against_the_server(server, tiny_chat_model_dir, tmp_path):
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve.py"), "--base-url", server, "--model", MODEL,
         "--tokenizer", str(tiny_chat_model_dir), "--num-prompts", "6", "--input-len", "16", "--output-len", "8",
         "--request-rate", "20", "--max-concurrency", "3", "--result-json", str(result)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Serving Benchmark Result" in proc.stdout
    summary = json.loads(result.read_text())
    assert (summary["completed"], summary["failed"], summary["total_output_tokens"]) == (6, 0, 48)
    assert summary["total_input_tokens"] == 96
    assert 0 < summary["median_ttft_ms"] and 0 < summary["mean_tpot_ms"] and 0 < summary["p99_itl_ms"]


def test_tokenize_detokenize_and_version(server, tokenizer):
    text = "Hello tokenizer"
    body = httpx.post(f"{server}/tokenize", json={"model": MODEL, "prompt": text}).json()
    assert body["tokens"] == tokenizer(text).input_ids and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 1024
    chat = httpx.post(f"{server}/tokenize", json={"messages": [{"role": "user", "content": text}]}).json()
    assert chat["tokens"] == tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                           add_generation_prompt=True, return_dict=False)
    assert httpx.post(f"{server}/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": text}
    assert httpx.post(f"{server}/detokenize", json={"tokens": [10**9]}).status_code == 400
    assert httpx.post(f"{server}/tokenize", json={"prompt": "a", "messages": []}).status_code == 400
    assert httpx.get(f"{server}/version").json()["version"]


def test_echo_with_logprobs_returns_the_prompt_and_its_logprobs(client, tokenizer):
    prompt = "The quick brown fox"
    n_prompt = len(tokenizer(prompt).input_ids)
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kwargs).choices[0].text
    choice = client.completions.create(**kwargs, echo=True, logprobs=2).choices[0]
    assert choice.text == prompt + plain
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == n_prompt + 5 and "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, echo=True, stream=True))
    assert streamed == prompt + plain
