"""The structured-output backend contract: compile a request's spec into a grammar that masks tokens.

A backend is built once per engine from the tokenizer and the model's vocabulary
size. ``compile_grammar`` runs on a worker thread (it may take long); the grammar
it returns is then driven on the engine thread, one token at a time: fill the
bitmask of allowed next tokens, accept the sampled token. ``rollback`` undoes
accepted tokens, for speculative decoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from folo_core.registry import SelectionContext
from folo_core.sampling_params import STRUCTURED_OUTPUT_KINDS, StructuredOutputsParams

class StructuredOutputGrammar(ABC):
    """One request's matcher state."""

    @abstractmethod
    def accept_tokens(self, tokens: list[int]) -> bool:
        """Advance over ``tokens``; False if the grammar does not allow them."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens."""

    def validate_tokens(self, tokens: list[int]) -> int:
        """How many leading ``tokens`` the grammar allows from here, leaving its state as it was
        (draft tokens are checked before their bitmask rows are filled). The default accepts
        them one at a time and rolls back, so ``accept_tokens`` must change nothing when it
        refuses a token; override where the library validates without advancing."""
        accepted = 0
        for token in tokens:
            if self.is_terminated() or not self.accept_tokens([token]):
                break
            accepted += 1
        self.rollback(accepted)
        return accepted

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 words, bit ``t % 32`` of
        word ``t // 32`` set when token ``t`` is allowed)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar is complete and allows nothing more: the request is done."""


class StructuredOutputBackend(ABC):
    """A grammar engine. Register with ``register_structured_output_backends``."""

    kinds: ClassVar[tuple[str, ...]] = STRUCTURED_OUTPUT_KINDS  # what ``compile_grammar`` takes

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        """Why this backend cannot run here (e.g. its library is not installed); empty if it can."""
        return []

    @classmethod
    def unsupported(cls, params: StructuredOutputsParams) -> str | None:
        """Why this backend cannot take the request (``auto`` then tries the next one), or None."""
        return None if params.kind in cls.kinds else f"no {params.kind} support"

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @abstractmethod
    def validate(self, params: StructuredOutputsParams) -> None:
        """Raise ``ValueError`` naming the problem if the spec cannot compile; fast (runs per request)."""

    @abstractmethod
    def compile_grammar(self, params: StructuredOutputsParams) -> StructuredOutputGrammar:
        """The grammar for ``params.spec`` (``params.kind``); raises with the compiler's message if it cannot."""
