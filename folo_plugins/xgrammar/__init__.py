"""Plugin ``xgrammar``: structured output with xgrammar (extra ``folovllm[xgrammar]``, see docs)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.xgrammar.backend import XgrammarBackend


@hookimpl
def register_structured_output_backends(register):
    register("xgrammar", XgrammarBackend, priority=50)
