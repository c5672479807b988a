"""Plugin ``guidance``: structured output with llguidance (the default backend)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.guidance.backend import GuidanceBackend


@hookimpl
def register_structured_output_backends(register):
    register("guidance", GuidanceBackend, priority=100)
