"""Structured output: grammars that constrain sampling, from pluggable backends (vLLM v1's design)."""

from folo_core.structured_output.backend import StructuredOutputBackend, StructuredOutputGrammar
from folo_core.structured_output.bitmask import allocate_token_bitmask, apply_token_bitmask

__all__ = ["StructuredOutputBackend", "StructuredOutputGrammar", "allocate_token_bitmask", "apply_token_bitmask"]
