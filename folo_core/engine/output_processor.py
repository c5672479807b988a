"""Turns engine-core outputs (token ids) into user ``RequestOutput``s.

Owns per-request text state: incremental detokenization, stop strings (which
finish a request the core still thinks is running, so the caller aborts it),
logprobs with decoded tokens, and timing metrics. A request with ``n > 1`` runs
as ``n`` child requests whose outputs a ``ParentRequest`` gathers (vLLM's fan-out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from folo_core.engine.detokenizer import IncrementalDetokenizer
from folo_core.outputs import (CompletionOutput, Logprob, PromptLogprobs, RequestMetrics, RequestOutput,
                               SampleLogprobs)
from folo_core.sampling_params import RequestOutputKind, SamplingParams
from folo_core.sched.output import EngineCoreOutput, LogprobsEntry


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None
    metrics: RequestMetrics
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: SampleLogprobs | None = None
    prompt_logprobs: PromptLogprobs | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    num_cached_tokens: int = 0
    parent: "ParentRequest | None" = None
    index: int = 0  # this child's place among its parent's n outputs
    _sent_tokens: int = 0
    _sent_logprobs: int = 0

    def make_output(self, finished: bool) -> RequestOutput | None:
        kind = self.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        text = self.detokenizer.get_next_output_text(finished, delta) if self.detokenizer else ""
        token_ids, logprobs = self.output_token_ids, self.logprobs
        if delta:
            token_ids = token_ids[self._sent_tokens:]
            self._sent_tokens = len(self.output_token_ids)
            if logprobs is not None:
                logprobs = logprobs[self._sent_logprobs:]
                self._sent_logprobs = len(self.logprobs)
        completion = CompletionOutput(
            index=self.index, text=text, token_ids=list(token_ids), cumulative_logprob=self.cumulative_logprob,
            logprobs=list(logprobs) if logprobs is not None else None,
            finish_reason=self.finish_reason, stop_reason=self.stop_reason, error=self.error)
        prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, (None if delta else self.prompt_logprobs)
        if self.parent is not None:
            return self.parent.make_output(completion, finished, self, prompt_logprobs)
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, [completion], finished,
                             metrics=self.metrics, num_cached_tokens=self.num_cached_tokens,
                             prompt_logprobs=prompt_logprobs)


class ParentRequest:
    """One user request with ``n > 1``: ``n`` child requests, one ``RequestOutput``."""

    def __init__(self, request_id: str, params: SamplingParams) -> None:
        self.request_id = request_id
        self.params = params
        self.child_ids = [f"{i}_{request_id}" for i in range(params.n)]
        self.latest: list[CompletionOutput | None] = [None] * params.n
        self.num_finished = 0
        self.prompt_logprobs: PromptLogprobs | None = None

    def child_params(self, index: int) -> SamplingParams:
        """Each child samples on its own; a seeded parent gives child ``i`` seed ``seed + i``."""
        params = self.params.clone()
        params.n = 1
        if params.seed is not None:
            params.seed += index
        if params.output_kind == RequestOutputKind.FINAL_ONLY:
            params.output_kind = RequestOutputKind.CUMULATIVE  # the parent holds back, not the child
        return params

    def make_output(self, completion: CompletionOutput, child_finished: bool, child: RequestState,
                    prompt_logprobs: PromptLogprobs | None = None) -> RequestOutput | None:
        self.latest[completion.index] = completion
        self.num_finished += child_finished
        finished = self.num_finished == len(self.child_ids)
        kind = self.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        outputs = [completion] if kind == RequestOutputKind.DELTA else [c for c in self.latest if c is not None]
        if prompt_logprobs is not None:
            self.prompt_logprobs = prompt_logprobs  # the same prompt for every child: keep one
        return RequestOutput(self.request_id, child.prompt, child.prompt_token_ids, outputs, finished,
                             metrics=child.metrics, num_cached_tokens=child.num_cached_tokens,
                             prompt_logprobs=prompt_logprobs if kind == RequestOutputKind.DELTA
                             else self.prompt_logprobs)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self.parents: dict[str, ParentRequest] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, arrival_time: float, parent: ParentRequest | None = None,
                    index: int = 0) -> None:
        detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params) if self.tokenizer else None
        self.states[request_id] = RequestState(
            request_id, prompt, prompt_token_ids, params, detok, RequestMetrics(arrival_time),
            logprobs=[] if params.logprobs is not None else None,
            cumulative_logprob=0.0 if params.logprobs is not None else None,
            parent=parent, index=index,
        )
        if parent is not None:
            self.parents[parent.request_id] = parent

    def expand_request_ids(self, request_ids: list[str]) -> list[str]:
        """User request ids -> the engine-core ids (children of ``n > 1`` requests)."""
        out = []
        for req_id in request_ids:
            parent = self.parents.get(req_id)
            out.extend(parent.child_ids if parent is not None else [req_id])
        return out

    def abort_requests(self, request_ids: list[str]) -> None:
        for req_id in request_ids:
            state = self.states.pop(req_id, None)
            if state is not None and state.parent is not None:
                self.parents.pop(state.parent.request_id, None)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns the user outputs and the ids the core must abort (stopped by a stop string)."""
        request_outputs, to_abort = [], []
        now = time.time()
        for out in outputs:
            state = self.states.get(out.request_id)
            if state is None:
                continue  # aborted meanwhile
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            state.metrics.last_token_time = now
            state.num_cached_tokens = out.num_cached_tokens
            if out.prompt_logprobs is not None:
                state.prompt_logprobs = [None] + [self._position(entry) for entry in out.prompt_logprobs]
            state.finish_reason, state.stop_reason, state.error = out.finish_reason, out.stop_reason, out.error
            new_token_ids, new_logprobs = out.new_token_ids, out.new_logprobs
            if state.detokenizer is not None:
                # Ended by a stop token (EOS, stop_token_ids), whose text is left out; a grammar
                # that completes ends on a content token.
                stop_terminated = (out.finish_reason == "stop" and bool(new_token_ids)
                                   and new_token_ids[-1] in state.params.all_stop_token_ids)
                stop_string, used = state.detokenizer.update(new_token_ids, stop_terminated)
                if stop_string is not None:
                    if not out.finished:
                        to_abort.append(out.request_id)
                    state.finish_reason, state.stop_reason = "stop", stop_string
                    new_token_ids, new_logprobs = new_token_ids[:used], new_logprobs[:used]
            state.output_token_ids.extend(new_token_ids)
            if state.logprobs is not None:
                self._add_logprobs(state, new_logprobs)
            finished = state.finish_reason is not None
            if finished:
                state.metrics.finished_time = now
                del self.states[out.request_id]
            request_output = state.make_output(finished)
            if request_output is not None:
                request_outputs.append(request_output)
            if state.parent is not None and state.parent.num_finished == len(state.parent.child_ids):
                self.parents.pop(state.parent.request_id, None)  # every child done
        return request_outputs, to_abort

    def _position(self, entry: LogprobsEntry) -> dict[int, Logprob]:
        """One position's logprobs: the chosen token first, then the top-k not already listed."""
        position: dict[int, Logprob] = {}
        for token_id, logprob, rank in zip(entry.token_ids, entry.logprobs, entry.ranks):
            if token_id not in position:
                position[token_id] = Logprob(logprob, rank, self._decode_token(token_id))
        return position

    def _add_logprobs(self, state: RequestState, entries: list[LogprobsEntry]) -> None:
        for entry in entries:
            state.logprobs.append(self._position(entry))
            state.cumulative_logprob += entry.logprobs[0]

    def _decode_token(self, token_id: int) -> str | None:
        return self.tokenizer.decode([token_id]) if self.tokenizer else None
