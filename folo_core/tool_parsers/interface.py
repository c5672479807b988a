"""The tool-parser contract: a model's completed text -> content and tool calls.

Each model family writes calls its own way (Hermes/Qwen ``<tool_call>{...}</tool_call>``,
Llama 3 bare JSON); the chat template tells the model the format, the parser
reads it back. With ``tool_choice="auto"`` the server streams text until
``call_start`` appears (``may_start_call``), then holds the rest back and parses it
when the request finishes.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ExtractedToolCalls:
    content: str | None  # text outside the calls (None if there is none)
    tool_calls: list[ParsedToolCall] = field(default_factory=list)

    @property
    def tools_called(self) -> bool:
        return bool(self.tool_calls)


class ToolParser(ABC):
    """Register with ``register_tool_parsers``; built with the served tokenizer."""

    call_start: ClassVar[str]  # text that opens a call; the stream holds back from here

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """The calls in a finished output; text that is not a well-formed call stays content."""

    def may_start_call(self, text: str) -> int | None:
        """Where in ``text`` a call may begin (so streaming must hold back from there), or None."""
        index = text.find(self.call_start)
        if index >= 0:
            return index
        for keep in range(min(len(self.call_start) - 1, len(text)), 0, -1):  # a prefix of call_start at the end
            if self.call_start.startswith(text[-keep:]):
                return len(text) - keep
        return None


def call_from_json(obj: Any, arguments_key: str = "arguments") -> ParsedToolCall | None:
    """``{"name": ..., <arguments_key>: {...}}`` -> a call, or None if ``obj`` is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    return ParsedToolCall(obj["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))
