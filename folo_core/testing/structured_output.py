"""The structured-output suite every backend passes, built-in or third-party.

    from folo_core.testing import check_structured_outputs
    check_structured_outputs(LLM(path, structured_outputs_backend="my_backend"))

It sends random JSON schemas (nested objects, arrays, enums, bounded numbers,
required fields), regexes, choices and a Lark grammar in one batch, and checks every output: JSON parses and validates against its schema
(``jsonschema``), regexes match in full, choices are one of the choices, and each
request ended because its grammar completed (``finish_reason == "stop"``). The
schemas are bounded (``maxLength``, ``maxItems``, no extra properties), so even a
random-weights model completes them. The defaults sample (seeded, temperature 0.8)
compact JSON: greedy decoding or free whitespace let a small model loop (newline
after newline, a key that never ends) until ``max_tokens``, which says nothing
about the backend.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

from folo_core.sampling_params import SamplingParams, StructuredOutputsParams

REGEXES = [r"[a-z]{3,6}", r"\d{3}-\d{4}", r"(yes|no|maybe)", r"[A-Z][a-z]{1,5} [0-9]{1,3}", r"#[0-9a-f]{6}"]
CHOICES = [["red", "green", "blue"], ["Paris", "London", "Rome", "Berlin"], ["a b", "c\"d", "é"]]
GRAMMAR = 'start: greeting " " name\ngreeting: "hello" | "hi"\nname: "bob" | "alice" | "carol"'
GRAMMAR_OUTPUTS = {f"{g} {n}" for g in ("hello", "hi") for n in ("bob", "alice", "carol")}


def random_json_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random bounded schema; objects nest at most two levels deep."""
    kinds = ["string", "integer", "number", "boolean", "enum", "null"] + (["object", "array"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 6)}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 1000)}
    if kind == "number":  # a free decimal lets a small model write digits forever: offer a few
        return {"type": "number", "minimum": -10, "maximum": 100,
                "enum": rng.sample([-2.5, 0.0, 0.125, 3.75, 42.0, 99.5], rng.randint(1, 3))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["alpha", "beta", "gamma", "delta", 1, 2, True], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": random_json_schema(rng, depth + 1), "maxItems": rng.randint(1, 3)}
    names = rng.sample(["id", "name", "tags", "score", "ok", "kind", "meta", "size"], rng.randint(1, 4))
    return {"type": "object", "properties": {n: random_json_schema(rng, depth + 1) for n in names},
            "required": rng.sample(names, rng.randint(0, len(names))), "additionalProperties": False}


def random_object_schema(rng: random.Random) -> dict[str, Any]:
    while (schema := random_json_schema(rng))["type" if "type" in schema else "enum"] != "object":
        pass
    return schema


Check = Callable[[str], None]


def structured_output_cases(num_schemas: int = 50, seed: int = 0, disable_any_whitespace: bool = False,
                            json_object: bool = False) -> list[tuple[StructuredOutputsParams, Check]]:
    """(constraint, check of the output text) pairs: ``num_schemas`` schemas plus one of each other kind.

    ``json_object`` (any object) has no bound, so it is off by default: a random-weights
    model writes one endless key, and even a real one may fill ``max_tokens``.
    """
    import jsonschema

    rng = random.Random(seed)
    cases: list[tuple[StructuredOutputsParams, Check]] = []

    def json_check(schema: dict[str, Any]) -> Check:
        return lambda text: jsonschema.validate(json.loads(text), schema)

    for _ in range(num_schemas):
        schema = random_object_schema(rng)
        cases.append((StructuredOutputsParams(json=schema, disable_any_whitespace=disable_any_whitespace),
                      json_check(schema)))
    for regex in REGEXES:
        cases.append((StructuredOutputsParams(regex=regex), _matches(regex)))
    for choices in CHOICES:
        cases.append((StructuredOutputsParams(choice=choices), _one_of(choices)))
    cases.append((StructuredOutputsParams(grammar=GRAMMAR), _one_of(sorted(GRAMMAR_OUTPUTS))))
    if json_object:
        cases.append((StructuredOutputsParams(json_object=True, disable_any_whitespace=disable_any_whitespace),
                      json_check({"type": "object"})))
    return cases


def _matches(regex: str) -> Check:
    def check(text: str) -> None:
        assert re.fullmatch(regex, text), f"{text!r} does not match {regex!r}"
    return check


def _one_of(choices: list[str]) -> Check:
    def check(text: str) -> None:
        assert text in choices, f"{text!r} is not one of {choices}"
    return check


def check_structured_outputs(llm: Any, num_schemas: int = 50, seed: int = 0, max_tokens: int = 400,
                             disable_any_whitespace: bool = True, temperature: float = 0.8,
                             json_object: bool = False) -> None:
    """Run the suite through ``llm.generate`` in one batch; raises AssertionError naming the first failure."""
    cases = structured_output_cases(num_schemas, seed, disable_any_whitespace, json_object)
    prompt = "Answer with the requested format only.\nAnswer:"
    params = [SamplingParams(temperature=temperature, seed=seed + i, max_tokens=max_tokens, structured_outputs=so)
              for i, (so, _) in enumerate(cases)]
    outputs = llm.generate([prompt] * len(cases), params, use_tqdm=False)
    for (so, check), output in zip(cases, outputs):
        completion = output.outputs[0]
        context = f"{so.kind} {json.dumps(so.spec)[:300]} -> {completion.text[:300]!r}"
        assert completion.finish_reason == "stop", f"grammar never completed ({completion.finish_reason}): {context}"
        try:
            check(completion.text)
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {str(exc)[:300]}; {context}") from None
