"""Structured output through ``folo serve`` with the official openai client (real SmolLM2)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from test_server import IN_PROCESS, MODEL, running_server


class City(BaseModel):
    # Bounded: greedy decoding of a 135M model would otherwise repeat a digit until max_tokens.
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population_millions: int = Field(ge=0, le=50)


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory) -> Iterator[str]:
    with running_server(smollm2_path, tmp_path_factory.mktemp("serve-so") / "server.log", IN_PROCESS) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "Describe Paris as JSON with name, country and population_millions."}]


def test_response_format_json_schema(client):
    schema = City.model_json_schema()
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_parse_with_a_pydantic_model(client):
    completion = client.beta.chat.completions.parse(model=MODEL, messages=ASK, temperature=0, max_tokens=100,
                                                    response_format=City)
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name


def test_json_object_and_legacy_guided_fields(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": 'Reply with {"ok": true}'}], temperature=0, max_tokens=200,
        response_format={"type": "json_object"})
    content = response.choices[0].message.content
    assert content.startswith("{")  # any object: unbounded, so only a finished one must parse
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    choice = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
                                       extra_body={"guided_choice": ["Paris", "Lyon"]}).choices[0]
    assert choice.text in ("Paris", "Lyon") and choice.finish_reason == "stop"
    regex = client.completions.create(model=MODEL, prompt="Phone:", max_tokens=16, temperature=0,
                                      extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}}).choices[0]
    assert len(regex.text) == 8 and regex.text[3] == "-"


def test_streamed_structured_output_reassembles(client):
    chunks = client.completions.create(model=MODEL, prompt="Colour:", max_tokens=8, temperature=0, stream=True,
                                       extra_body={"guided_choice": ["red", "green", "blue"]})
    assert "".join(c.choices[0].text for c in chunks if c.choices) in ("red", "green", "blue")


@pytest.mark.parametrize("body, needle", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objec"}}}},
     "invalid json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "needs json_schema.schema"),
    ({"guided_regex": "[a-"}, "invalid regex"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "set only one output constraint"),
    ({"structured_outputs": {"regex": "a", "bogus": 1}}, "unknown field(s) bogus"),
])
def test_broken_constraints_are_400_naming_the_problem(server, body, needle):
    response = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": ASK, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_logit_bias_bans_and_forces_through_the_client(client, smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    kwargs = dict(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    first = tokenizer.encode(client.completions.create(**kwargs).choices[0].text, add_special_tokens=False)[0]
    banned = client.completions.create(**kwargs, logit_bias={str(first): -100}).choices[0].text
    assert first not in tokenizer.encode(banned, add_special_tokens=False)
    forced_id = tokenizer.encode(" banana", add_special_tokens=False)[0]
    forced = client.completions.create(**kwargs, logit_bias={str(forced_id): 100}).choices[0].text
    assert tokenizer.encode(forced, add_special_tokens=False) == [forced_id] * 4
    allowed = client.completions.create(**kwargs, extra_body={"allowed_token_ids": [forced_id]}).choices[0].text
    assert tokenizer.encode(allowed, add_special_tokens=False) == [forced_id] * 4
