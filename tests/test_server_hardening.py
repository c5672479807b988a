"""A hostile or careless client cannot freeze ``folo serve``, and its mistakes are 400s, not 500s.

Real subprocess servers (``test_server.server_process``), driven with raw httpx so
bodies can be malformed on purpose.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from test_server import IN_PROCESS, MODEL, running_server, server_process, wait_for_metrics, idle

LONG = ["--max-model-len", "4096"]  # a prompt cap of 4096 x 128 x 4 = 2.1M characters (Qwen3 tokenizer)


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir, tmp_path_factory) -> Iterator[str]:
    with running_server(tiny_chat_model_dir, tmp_path_factory.mktemp("hard") / "server.log", IN_PROCESS, *LONG) as url:
        yield url


@pytest.fixture(scope="module")
def trusting_server(tiny_chat_model_dir, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("hard-trust") / "server.log"
    with running_server(tiny_chat_model_dir, log, IN_PROCESS, "--trust-request-chat-template",
                        "--max-request-body-bytes", "65536") as url:
        yield url


def post(base_url: str, path: str, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{base_url}{path}", content=content, headers={"content-type": "application/json"},
                      timeout=timeout)


def assert_openai_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_request_chat_template_is_refused_unless_trusted(server, trusting_server):
    assert_openai_error(post(server, "/v1/chat/completions", chat("hi", chat_template=TEMPLATE)), 400,
                        "--trust-request-chat-template")
    response = post(trusting_server, "/v1/chat/completions", chat("hi", chat_template=TEMPLATE))
    assert response.status_code == 200, response.text


def test_bodies_over_the_limit_are_413_declared_or_chunked(trusting_server):
    big = json.dumps({"model": MODEL, "prompt": "x" * 70_000, "max_tokens": 1}).encode()
    assert_openai_error(post(trusting_server, "/v1/completions", big), 413, "65536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what streams in
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    response = httpx.post(f"{trusting_server}/v1/completions", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert_openai_error(response, 413, "65536 bytes")
    assert httpx.get(f"{trusting_server}/health").status_code == 200


def test_default_body_limit_refuses_a_10_mb_prompt(server):
    body = {"model": MODEL, "prompt": "y" * 10_000_000, "max_tokens": 1}
    assert_openai_error(post(server, "/v1/completions", body), 413, "--max-request-body-bytes")


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": MODEL, "prompt": "z" * 5_000_000, "max_tokens": 1}),
    ("/v1/chat/completions", chat("z" * 5_000_000)),
])
def test_text_over_the_character_cap_is_refused_before_tokenizing(server, path, body):
    start = time.monotonic()
    assert_openai_error(post(server, path, body), 400, "characters")
    assert time.monotonic() - start < 5  # 5M characters would take about 2 s just to tokenize


def _max_gap_while(base_url: str, work) -> tuple[float, float, object]:
    """(largest gap between a concurrent stream's chunks, slowest /health, ``work()``'s result)."""
    gaps: list[float] = []
    health: list[float] = []
    started = threading.Event()
    stop = threading.Event()

    def stream() -> None:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000, "stream": True,
                "ignore_eos": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as response:
            last = None
            for line in response.iter_lines():
                now = time.monotonic()
                if line.startswith("data: ") and last is not None and not stop.is_set():
                    gaps.append(now - last)
                last = now
                started.set()
                if stop.is_set():
                    break

    def probe() -> None:
        while not stop.is_set():
            start = time.monotonic()
            assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
            health.append(time.monotonic() - start)
            time.sleep(0.05)

    threads = [threading.Thread(target=stream), threading.Thread(target=probe)]
    threads[0].start()
    assert started.wait(60)
    threads[1].start()
    try:
        result = work()
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    return max(gaps), max(health), result


def test_tokenizing_a_long_prompt_stalls_neither_streams_nor_health(server):
    prompt = "hello world " * 170_000  # 2.04M characters: under the cap, over 1 s to tokenize
    gap, health, response = _max_gap_while(
        server, lambda: post(server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1}))
    assert_openai_error(response, 400, "longer than the maximum model length")
    assert gap < 0.8, f"a concurrent stream stalled {gap:.2f} s"
    assert health < 0.8, f"/health took {health:.2f} s"


@pytest.mark.parametrize("path, raw", [
    ("/v1/completions", b'{"model": "%s", "prompt": "bad \\ud800 text", "max_tokens": 1}'),
    ("/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "x\\udfff"}]}'),
    ("/v1/chat/completions",
     b'{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'),
    ("/v1/completions", b'{"model": "%s", "prompt": "ok", "stop": ["\\udc00"], "max_tokens": 1}'),
])
def test_lone_surrogates_are_400(server, path, raw):
    assert_openai_error(post(server, path, raw.replace(b"%s", MODEL.encode())), 400, "lone surrogate")


@pytest.mark.parametrize("kwargs, needle", [
    ({"tokenize": True}, "may not set tokenize"),
    ({"conversation": [], "chat_template": "x"}, "may not set chat_template, conversation"),
])
def test_bad_chat_template_kwargs_are_400(server, kwargs, needle):
    assert_openai_error(post(server, "/v1/chat/completions", chat("hi", chat_template_kwargs=kwargs)), 400, needle)


def test_template_variables_in_chat_template_kwargs_still_work(server):
    response = post(server, "/v1/chat/completions", chat("hi", chat_template_kwargs={"enable_thinking": False}))
    assert response.status_code == 200, response.text
    wait_for_metrics(server, idle)


def test_sigterm_ends_streams_with_an_error_and_done_and_answers_waiting_calls(tiny_chat_model_dir, tmp_path):
    with server_process(tiny_chat_model_dir, tmp_path / "server.log", *LONG) as (proc, base_url):
        results: dict[str, object] = {}
        streaming = threading.Event()

        def stream() -> None:
            body = {"model": MODEL, "prompt": "Count:", "max_tokens": 4000, "stream": True, "ignore_eos": True}
            with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as response:
                lines = []
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        streaming.set()
                results["stream"] = lines

        def whole() -> None:
            body = {"model": MODEL, "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True}
            results["whole"] = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)

        threads = [threading.Thread(target=whole), threading.Thread(target=stream)]
        for thread in threads:
            thread.start()
        assert streaming.wait(60)
        time.sleep(0.3)  # both requests are in the engine
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    lines = results["stream"]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "shutting_down" and "shut down" in error["message"]
    assert_openai_error(results["whole"], 503, "shut down")
