"""Hermes format (Qwen2.5 and Qwen3 chat templates): ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``."""

from __future__ import annotations

import json
import re

from folo_core.tool_parsers.interface import ExtractedToolCalls, ToolParser, call_from_json

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


class HermesToolParser(ToolParser):
    call_start = "<tool_call>"

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        start = text.find(self.call_start)
        if start < 0:
            return ExtractedToolCalls(content=text)
        calls = []
        for body in _CALL.findall(text[start:]):
            try:
                call = call_from_json(json.loads(body))
            except json.JSONDecodeError:
                call = None
            if call is None:
                return ExtractedToolCalls(content=text)  # not a well-formed call: leave it as text
            calls.append(call)
        content = text[:start].strip()
        return ExtractedToolCalls(content=content or None, tool_calls=calls)
