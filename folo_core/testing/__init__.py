"""Test kits a plugin runs in its own test suite.

    from folo_core.testing import AttentionBackendConformance

    class TestMyBackend(AttentionBackendConformance):
        backend = MyBackend

    from folo_core.testing import check_structured_outputs

    check_structured_outputs(LLM(path, structured_outputs_backend="my_backend"))
"""

from folo_core.testing.attention_conformance import (
    AttentionBackendConformance,
    ConformanceCase,
    check_conformance,
    conformance_cases,
)
from folo_core.testing.structured_output import check_structured_outputs, structured_output_cases

__all__ = ["AttentionBackendConformance", "ConformanceCase", "check_conformance", "check_structured_outputs",
           "conformance_cases", "structured_output_cases"]
