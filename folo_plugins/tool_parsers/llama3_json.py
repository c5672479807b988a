"""Llama 3.x JSON format: ``{"name": .., "parameters": {..}}`` (maybe after ``<|python_tag|>``), calls split by ``;``."""

from __future__ import annotations

import json

from folo_core.tool_parsers.interface import ExtractedToolCalls, ToolParser, call_from_json


class Llama3JsonToolParser(ToolParser):
    call_start = "{"

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return ExtractedToolCalls(content=text)
        decoder = json.JSONDecoder()
        calls, index = [], 0
        while index < len(body):
            try:
                obj, end = decoder.raw_decode(body, index)
            except json.JSONDecodeError:
                return ExtractedToolCalls(content=text)
            call = call_from_json(obj, arguments_key="parameters")
            if call is None:
                return ExtractedToolCalls(content=text)
            calls.append(call)
            index = end
            while index < len(body) and body[index] in " \n\t;":
                index += 1
        return ExtractedToolCalls(content=None, tool_calls=calls)

    def may_start_call(self, text: str) -> int | None:
        """Only a reply that opens with JSON is a call; text with braces later is content."""
        stripped = text.lstrip()
        if stripped and (stripped.startswith(("{", "<|python_tag|>")) or "<|python_tag|>".startswith(stripped)):
            return 0
        return None
