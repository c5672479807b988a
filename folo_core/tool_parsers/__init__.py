"""Tool parsers: find the tool calls in a model's text (a plugin kind, as vLLM's ``--tool-call-parser``)."""

from folo_core.tool_parsers.interface import ExtractedToolCalls, ParsedToolCall, ToolParser

__all__ = ["ExtractedToolCalls", "ParsedToolCall", "ToolParser"]
