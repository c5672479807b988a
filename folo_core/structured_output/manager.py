"""``StructuredOutputManager`` (vLLM's name): picks a backend per request, compiles grammars off the
step loop, and fills each step's token bitmask.

Compiling can take long (a large schema, a big vocabulary), so it runs on a thread
pool: the request waits as ``WAITING_FOR_FSM`` and the scheduler takes it only once
its grammar is ready; no other request's step waits for it. Backends are built on
first use (building one indexes the whole vocabulary).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from folo_core.logger import init_logger
from folo_core.registry import PluginSelectionError, Registry, SelectionContext
from folo_core.sampling_params import SamplingParams, StructuredOutputsParams
from folo_core.structured_output.backend import StructuredOutputBackend, StructuredOutputGrammar
from folo_core.structured_output.bitmask import allocate_token_bitmask

logger = init_logger(__name__)


@dataclass
class StructuredOutputRequest:
    """A request's grammar, compiling (``future``) or compiled."""

    backend: str
    future: Future[StructuredOutputGrammar]

    @property
    def ready(self) -> bool:
        return self.future.done()

    @property
    def error(self) -> str | None:
        """The compiler's message, if compiling failed (only once ``ready``)."""
        exc = self.future.exception()
        return None if exc is None else f"cannot compile the {self.backend} grammar: {exc}"

    @property
    def grammar(self) -> StructuredOutputGrammar:
        return self.future.result()


class StructuredOutputManager:
    def __init__(self, registry: Registry, backend_name: str, ctx: SelectionContext, tokenizer: Any,
                 vocab_size: int, max_workers: int = 2) -> None:
        self.registry = registry
        self.backend_name = backend_name
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._backends: dict[str, StructuredOutputBackend] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="folo-grammar")

    def select_backend(self, params: StructuredOutputsParams) -> str:
        """The backend for this request: the configured one, or under ``auto`` the first
        eligible backend (by priority) that supports what the request asks for."""
        if self.backend_name != "auto":
            entry = self.registry.select(self.backend_name, self.ctx)
            reason = entry.impl.unsupported(params)
            if reason:
                raise ValueError(f"structured output backend {entry.name!r} cannot take this request: {reason}")
            return entry.name
        tried = []
        for entry, reasons in self.registry.explain(self.ctx):
            reasons = reasons or [r for r in [entry.impl.unsupported(params)] if r]
            if not reasons:
                return entry.name
            tried.append(f"{entry.name}: {'; '.join(reasons)}")
        raise ValueError(f"no structured output backend can take this {params.kind} request "
                         f"({', '.join(tried) or 'none installed'})")

    def backend(self, name: str) -> StructuredOutputBackend:
        with self._lock:  # the processor (tokenizer thread) and the engine thread both ask
            if name not in self._backends:
                if self.tokenizer is None:
                    raise ValueError("structured output needs a tokenizer (skip_tokenizer_init=True was set)")
                impl = self.registry.get(name).impl
                self._backends[name] = impl(self.tokenizer, self.vocab_size)
            return self._backends[name]

    def validate(self, params: SamplingParams) -> None:
        """Refuse a spec that cannot compile, naming the problem (the processor calls this)."""
        so = params.structured_outputs
        try:
            self.backend(self.select_backend(so)).validate(so)
        except PluginSelectionError as exc:
            raise ValueError(str(exc)) from None

    def grammar_init(self, params: StructuredOutputsParams) -> StructuredOutputRequest:
        """Start compiling on the pool; the request waits for it as ``WAITING_FOR_FSM``."""
        name = self.select_backend(params)
        backend = self.backend(name)
        return StructuredOutputRequest(name, self._executor.submit(backend.compile_grammar, params))

    def grammar_bitmask(self, grammars: dict[str, StructuredOutputGrammar],
                        spec_tokens: dict[str, list[int]]) -> tuple[dict[str, int], torch.Tensor]:
        """(first row per request id, bitmask) of the allowed next tokens of the requests that sample now.

        A request verifying draft tokens gets a row per draft position and one after, in
        order: the grammar advances over the drafts it allows, filling each next row, then
        rolls back (the scheduler advances it over what is kept). Rows after the first
        draft it refuses stay all-allowed: that draft is banned by its own row, so the
        positions after it are never emitted.
        """
        rows, num_rows = {}, 0
        for req_id in grammars:
            rows[req_id] = num_rows
            num_rows += 1 + len(spec_tokens.get(req_id, ()))
        bitmask = allocate_token_bitmask(num_rows, self.vocab_size)
        for req_id, grammar in grammars.items():
            grammar.fill_bitmask(bitmask, rows[req_id])
            drafts = spec_tokens.get(req_id, [])
            valid = grammar.validate_tokens(drafts) if drafts else 0
            for j, token in enumerate(drafts[:valid]):
                grammar.accept_tokens([token])
                if grammar.is_terminated():  # the request ends at this draft
                    valid = j + 1
                    break
                grammar.fill_bitmask(bitmask, rows[req_id] + j + 1)
            grammar.rollback(valid)
        return rows, bitmask

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
