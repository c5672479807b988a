"""Tool calling for ``/v1/chat/completions``: what ``tool_choice`` does to a request and its output.

- ``none`` (or no tools): plain chat; the tools are not shown to the template.
- ``auto``: the template shows the tools, the model decides, and the server's tool
  parser (``--tool-call-parser``, with ``--enable-auto-tool-choice``) reads calls
  back out of the text.
- ``required`` and a named function: structured output forces the call, so it
  always parses: a JSON array of ``{"name", "parameters"}`` for ``required``, the
  function's ``parameters`` object for a named one.
"""

from __future__ import annotations

import json
from typing import Any

from folo_core.entrypoints.openai.protocol import (ChatCompletionNamedToolChoiceParam, ChatCompletionRequest,
                                                   FunctionCall, ToolCall)
from folo_core.sampling_params import StructuredOutputsParams
from folo_core.tool_parsers import ToolParser

NAMED, REQUIRED, AUTO = "named", "required", "auto"


def tool_choice_mode(request: ChatCompletionRequest, parser: ToolParser | None, auto_enabled: bool) -> str | None:
    """``named``, ``required``, ``auto`` or None (no tool calling); ValueError if the server cannot."""
    if not request.tools or request.tool_choice == "none":
        return None
    if isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam):
        return NAMED
    if request.tool_choice == "required":
        return REQUIRED
    if not (auto_enabled and parser is not None):  # "auto", given or by default
        if request.tool_choice is None:
            return None  # tools listed but not asked for: vLLM leaves them to the template alone
        raise ValueError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    return AUTO


def _parameters(tool: Any) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


def forced_call_constraint(request: ChatCompletionRequest, mode: str) -> StructuredOutputsParams:
    """The structured output that makes a ``named`` or ``required`` call always well-formed."""
    if mode == NAMED:
        tool = next(t for t in request.tools if t.function.name == request.tool_choice.function.name)
        return StructuredOutputsParams(json=_parameters(tool))
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "parameters"],
              "properties": {"name": {"const": t.function.name}, "parameters": _parameters(t)}}
             for t in request.tools]
    return StructuredOutputsParams(json={"type": "array", "minItems": 1, "items": {"anyOf": calls}})


def forced_calls(request: ChatCompletionRequest, mode: str, text: str) -> list[ToolCall]:
    """The calls in a finished ``named``/``required`` output (the grammar made it valid JSON)."""
    if mode == NAMED:
        return [ToolCall(function=FunctionCall(name=request.tool_choice.function.name, arguments=text))]
    return [ToolCall(function=FunctionCall(name=call["name"], arguments=json.dumps(call["parameters"])))
            for call in json.loads(text)]
