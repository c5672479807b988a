"""Plugin ``tool_parsers``: the ``hermes`` (Qwen2.5/Qwen3, Hermes) and ``llama3_json`` tool-call formats."""

from folo_core.hookspecs import hookimpl
from folo_plugins.tool_parsers.hermes import HermesToolParser
from folo_plugins.tool_parsers.llama3_json import Llama3JsonToolParser


@hookimpl
def register_tool_parsers(register):
    register("hermes", HermesToolParser)
    register("llama3_json", Llama3JsonToolParser)
