"""xgrammar (MLC): JSON schema, regex, choice and EBNF/GBNF (or Lark) grammars.

It compiles a grammar against the whole vocabulary up front (an adaptive token
mask cache), so compiling costs more and each step's mask less than llguidance.
Its wheel's metadata pulls triton on Linux, which the CPU path never uses:
install it with ``pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2``.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import torch

from folo_core.registry import SelectionContext
from folo_core.sampling_params import StructuredOutputsParams
from folo_core.structured_output.backend import StructuredOutputBackend, StructuredOutputGrammar


class XgrammarGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept_tokens(self, tokens: list[int]) -> bool:
        return all(self.matcher.accept_token(token) for token in tokens)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self.matcher.rollback(num_tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()


def _choice_ebnf(choices: list[str]) -> str:
    # JSON string literals are valid EBNF literals (quotes and backslashes escaped).
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


# xgrammar 0.2.8 writes a JSON-schema string with minLength/maxLength as a run of the
# class below, which admits raw tabs and other control characters that JSON forbids (a
# sampled tab made the output unparseable); its unbounded strings exclude them all.
_LENGTH_BOUNDED_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def _json_grammar(schema: str, any_whitespace: bool) -> Any:
    """``Grammar.from_json_schema`` with every string character class excluding JSON's control characters."""
    from xgrammar import Grammar

    grammar = Grammar.from_json_schema(schema, any_whitespace=any_whitespace)
    text = str(grammar)
    if _LENGTH_BOUNDED_CHAR not in text:
        return grammar
    return Grammar.from_ebnf(text.replace(_LENGTH_BOUNDED_CHAR, _JSON_STRING_CHAR))


class XgrammarBackend(StructuredOutputBackend):
    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        return [] if importlib.util.find_spec("xgrammar") else [
            "xgrammar is not installed (pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2)"]

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        super().__init__(tokenizer, vocab_size)
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)

    @staticmethod
    def grammar(params: StructuredOutputsParams) -> Any:
        """The request's spec as an ``xgrammar.Grammar`` (parsing only: no vocabulary needed)."""
        from xgrammar import Grammar

        kind, spec = params.kind, params.spec
        whitespace = not params.disable_any_whitespace
        if kind == "json":
            return _json_grammar(spec if isinstance(spec, str) else json.dumps(spec), whitespace)
        if kind == "json_object":
            return _json_grammar('{"type": "object"}', whitespace)
        if kind == "regex":
            return Grammar.from_regex(spec)
        if kind == "choice":
            return Grammar.from_ebnf(_choice_ebnf(spec))
        try:
            return Grammar.from_ebnf(spec)
        except RuntimeError:
            return Grammar.from_lark(spec)

    def validate(self, params: StructuredOutputsParams) -> None:
        try:
            self.grammar(params)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid {params.kind}: {str(exc).strip()}") from None

    def compile_grammar(self, params: StructuredOutputsParams) -> XgrammarGrammar:
        import xgrammar

        compiled = self.compiler.compile_grammar(self.grammar(params))
        return XgrammarGrammar(xgrammar.GrammarMatcher(compiled))
