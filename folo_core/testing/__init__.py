"""Test kits a plugin runs in its own test suite.

    from folo_core.testing import AttentionBackendConformance

    class TestMyBackend(AttentionBackendConformance):
        backend = MyBackend
"""

from folo_core.testing.attention_conformance import (
    AttentionBackendConformance,
    ConformanceCase,
    check_conformance,
    conformance_cases,
)

__all__ = ["AttentionBackendConformance", "ConformanceCase", "check_conformance", "conformance_cases"]
