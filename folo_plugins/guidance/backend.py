"""llguidance (guidance-ai): JSON schema, regex, choice and Lark/GBNF grammars.

Its matcher computes each step's mask lazily over a token trie, so even a large
vocabulary costs tens of microseconds a token, and building it is cheap enough to
do per request on the grammar pool.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import torch

from folo_core.registry import SelectionContext
from folo_core.sampling_params import StructuredOutputsParams
from folo_core.structured_output.backend import StructuredOutputBackend, StructuredOutputGrammar


class GuidanceGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept_tokens(self, tokens: list[int]) -> bool:
        if self.matcher.is_stopped():
            return False
        return bool(self.matcher.consume_tokens(tokens))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self.matcher.rollback(num_tokens)

    def validate_tokens(self, tokens: list[int]) -> int:
        # A refused consume_tokens leaves the matcher in its error state; validate_tokens does not advance.
        return 0 if self.matcher.is_stopped() else self.matcher.validate_tokens(tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped()


class GuidanceBackend(StructuredOutputBackend):
    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        return [] if importlib.util.find_spec("llguidance") else ["llguidance is not installed"]

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        super().__init__(tokenizer, vocab_size)
        import llguidance.hf

        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, max(vocab_size, len(tokenizer)))

    @staticmethod
    def serialize(params: StructuredOutputsParams) -> str:
        """The llguidance grammar text for a request's spec."""
        import llguidance

        kind, spec = params.kind, params.spec
        defaults = {"whitespace_flexible": not params.disable_any_whitespace}
        if kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(
                spec if isinstance(spec, str) else json.dumps(spec), defaults=defaults)
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=defaults)
        if kind == "choice":
            return llguidance.grammar_from("choice", json.dumps(spec))
        return llguidance.grammar_from("regex" if kind == "regex" else "grammar", spec)

    def _grammar(self, params: StructuredOutputsParams) -> str:
        try:
            return self.serialize(params)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"invalid {params.kind}: {exc}") from None

    def validate(self, params: StructuredOutputsParams) -> None:
        import llguidance

        error = llguidance.LLMatcher.validate_grammar(self._grammar(params), self.ll_tokenizer)
        if error:
            raise ValueError(f"invalid {params.kind}: {error}")

    def compile_grammar(self, params: StructuredOutputsParams) -> GuidanceGrammar:
        import llguidance

        matcher = llguidance.LLMatcher(self.ll_tokenizer, self._grammar(params))
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return GuidanceGrammar(matcher)
