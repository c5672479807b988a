"""Tool calling in /v1/chat/completions with the openai client, and the built-in tool parsers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from folo_plugins.tool_parsers.hermes import HermesToolParser
from folo_plugins.tool_parsers.llama3_json import Llama3JsonToolParser
from test_server import IN_PROCESS, MODEL, running_server

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                      "parameters": {"type": "object", "additionalProperties": False,
                                                     "required": ["city"],
                                                     "properties": {"city": {"type": "string", "maxLength": 20}}}}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


# ----- parsers -----


def test_hermes_parser_reads_calls_and_leaves_the_rest():
    parser = HermesToolParser(None)
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    extracted = parser.extract_tool_calls(text)
    assert extracted.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in extracted.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert parser.extract_tool_calls("no calls here").tool_calls == []
    assert not parser.extract_tool_calls("<tool_call>{not json</tool_call>").tools_called
    assert parser.may_start_call("Sure <tool") == 5 and parser.may_start_call("Sure") is None


def test_llama3_json_parser_reads_semicolon_separated_calls():
    parser = Llama3JsonToolParser(None)
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    assert [(c.name, json.loads(c.arguments)) for c in parser.extract_tool_calls(text).tool_calls] == \
        [("a", {"x": 1}), ("b", {})]
    assert parser.extract_tool_calls("The answer is {x}").content == "The answer is {x}"
    assert parser.may_start_call("The answer") is None and parser.may_start_call(' {"na') == 0


# ----- through the server -----


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-tools") / "server.log"
    with running_server(smollm2_path, log, IN_PROCESS, "--tool-call-parser", "hermes", "--enable-auto-tool-choice") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def assert_valid_calls(calls) -> None:
    assert calls
    for call in calls:
        assert call.id and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_tool_choice_required_returns_a_valid_call(client):
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                              temperature=0, max_tokens=120)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)


def test_named_function_returns_that_call(client):
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = response.choices[0]
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    assert_valid_calls(choice.message.tool_calls)


def test_streamed_tool_calls_reassemble(client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                            temperature=0, max_tokens=120, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or delta.id
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and calls
    for call in calls.values():
        assert call["id"]
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_auto_parses_calls_the_model_writes_and_streams_the_text_before(client):
    """The model is made to write a Hermes call (a one-string choice), so the parser's path is exercised."""
    written = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=120,
                  extra_body={"structured_outputs": {"choice": [written]}})
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    assert_valid_calls(choice.message.tool_calls)
    content, arguments = "", ""
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            content += c.delta.content or ""
            arguments += "".join(d.function.arguments or "" for d in c.delta.tool_calls or [])
    assert "<tool_call>" not in content and content.strip() == "Checking."
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}


def test_plain_answers_still_work_under_auto(client):
    choice = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                            tools=TOOLS, temperature=0, max_tokens=8).choices[0]
    assert choice.message.content and not choice.message.tool_calls


def test_tool_messages_reach_the_chat_template(server):
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
    ]
    tokens = httpx.post(f"{server}/tokenize", json={"messages": messages}).json()["tokens"]
    rendered = httpx.post(f"{server}/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert "sunny, 21 degrees" in rendered
    response = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": messages, "tools": TOOLS, "max_tokens": 8})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body, needle", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ({"tool_choice": "required", "tools": None}, "tool_choice needs tools"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "already constrains the output"),
])
def test_bad_tool_requests_are_400(server, body, needle):
    response = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_auto_without_a_parser_is_400(tiny_chat_model_dir, tmp_path):
    with running_server(tiny_chat_model_dir, tmp_path / "server.log", IN_PROCESS) as url:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                              json={"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "auto"})
    assert response.status_code == 400
    assert "--enable-auto-tool-choice" in response.json()["error"]["message"]


def test_offline_chat_shows_tools_to_the_template(tiny_chat_model_dir):
    from folo_core import LLM

    llm = LLM(str(tiny_chat_model_dir), max_model_len=1024)
    with_tools = llm.render_chat(ASK, tools=TOOLS)["prompt"]
    assert "get_weather" in with_tools and "get_weather" not in llm.render_chat(ASK)["prompt"]
