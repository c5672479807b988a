"""The scheduler contract plus the bookkeeping every policy shares.

A policy implements ``schedule()``; adding, finishing, applying the runner's
output and stop checks are the same for all of them and live here. A step may
emit several tokens per request (kept draft tokens, then a drawn one): they are
appended and stop-checked one at a time, and whatever follows a stop is dropped.
A policy that schedules draft tokens counts them with ``num_tokens_with_spec``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from folo_core.config import CacheConfig, SchedulerConfig
from folo_core.kv_cache.interface import KVCacheManager
from folo_core.logger import init_logger
from folo_core.request import Request, RequestStatus
from folo_core.sched.output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from folo_core.spec_decode.metrics import SpecDecodingStats

logger = init_logger(__name__)


def check_stop(request: Request, new_token_id: int) -> bool:
    """Set the finished status if ``new_token_id`` ends the request (EOS, stop id, length)."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens and new_token_id in params.all_stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        if new_token_id in params.stop_token_ids:
            request.stop_reason = new_token_id
        return True
    if request.num_output_tokens >= request.max_tokens:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False


def advance_grammar(request: Request, token_id: int) -> bool:
    """Feed the sampled token to the request's grammar; a completed grammar ends it ("stop")."""
    grammar = request.structured_output_request.grammar
    accepted = grammar.accept_tokens([token_id])
    if not accepted:  # the mask allowed it, so the backend disagrees with itself
        logger.warning("request %s: the grammar refused sampled token %d; ending it", request.request_id, token_id)
    if not accepted or grammar.is_terminated():
        request.status = RequestStatus.FINISHED_STOPPED
        return True
    return False


class Scheduler(ABC):
    """Decides each step which requests run and how many tokens each gets."""

    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig,
                 kv_cache_manager: KVCacheManager) -> None:
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.kv_cache_manager = kv_cache_manager
        self.requests: dict[str, Request] = {}
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        # Structured-output requests whose grammar still compiles: no policy sees them yet.
        self.waiting_for_fsm: list[Request] = []
        # Requests the runner holds state for (scheduled since their last (re)start).
        self._runner_known: set[str] = set()
        self._finished_req_ids: set[str] = set()
        self._preempted_req_ids: set[str] = set()
        self._sent_blocks: dict[str, int] = {}  # block ids the runner has been told about
        self.num_preemptions = 0
        self.spec_decoding_stats = SpecDecodingStats()

    # -- the policy -------------------------------------------------------

    @abstractmethod
    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts; allocate their KV slots."""

    # -- shared bookkeeping -------------------------------------------------

    @staticmethod
    def num_tokens_with_spec(request: Request) -> int:
        """The request's tokens plus the drafts it may verify next: a decoding request's
        drafts, no more than its remaining output allows (each step emits one token more)."""
        drafts = request.spec_token_ids
        if not drafts or request.num_computed_tokens != request.num_tokens - 1:
            return request.num_tokens
        return request.num_tokens + max(0, min(len(drafts), request.max_tokens - request.num_output_tokens - 1))

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        if request.structured_output_request is not None and not request.structured_output_request.ready:
            request.status = RequestStatus.WAITING_FOR_FSM
            self.waiting_for_fsm.append(request)
        else:
            self.waiting.append(request)

    def promote_ready_grammars(self) -> list[EngineCoreOutput]:
        """Move requests whose grammar compiled to ``waiting``; fail those whose grammar did not."""
        outputs: list[EngineCoreOutput] = []
        for request in [r for r in self.waiting_for_fsm if r.structured_output_request.ready]:
            self.waiting_for_fsm.remove(request)
            request.status = RequestStatus.WAITING
            self.waiting.append(request)
            error = request.structured_output_request.error
            if error is not None:
                outputs.extend(self.fail_requests([request.request_id], error))
        return outputs

    def structured_output_grammars(self, scheduler_output: SchedulerOutput) -> dict[str, Any]:
        """The grammars of the scheduled requests that sample this step, in schedule order."""
        grammars = {}
        for req_id, n in scheduler_output.num_scheduled_tokens.items():
            request = self.requests[req_id]
            so_request = request.structured_output_request
            if so_request is not None and request.num_computed_tokens + n >= request.num_tokens:
                grammars[req_id] = so_request.grammar
        return grammars

    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Finish (e.g. abort) requests from outside; their blocks are freed at once."""
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            elif request.status == RequestStatus.WAITING_FOR_FSM:
                self.waiting_for_fsm.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free_request(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.waiting_for_fsm)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.waiting_for_fsm)

    def fail_requests(self, request_ids: Iterable[str], error: str) -> list[EngineCoreOutput]:
        """Finish requests whose step failed (``finish_reason="error"``), freeing their blocks."""
        outputs = []
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue
            self.finish_requests(req_id, RequestStatus.FINISHED_ERROR)
            outputs.append(EngineCoreOutput(req_id, [], finish_reason=request.get_finished_reason(),
                                            num_cached_tokens=max(request.num_cached_tokens, 0), error=error))
        return outputs

    def resend_dropped(self, scheduler_output: SchedulerOutput) -> None:
        """The step that carried ``scheduler_output`` failed, maybe before the runner read it:
        tell the runner again, with the next decision, which requests to drop."""
        self._finished_req_ids |= scheduler_output.finished_req_ids
        self._preempted_req_ids |= scheduler_output.preempted_req_ids

    def _free_request(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        self._sent_blocks.pop(request.request_id, None)
        # A preempted request's runner state (its seeded generator) outlives the preemption.
        if request.request_id in self._runner_known or request.num_preemptions:
            self._runner_known.discard(request.request_id)
            self._finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: drop its KV, send it to the front of the waiting queue."""
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._sent_blocks.pop(request.request_id, None)
        if request.request_id in self._runner_known:
            self._runner_known.discard(request.request_id)
            self._preempted_req_ids.add(request.request_id)
        self.waiting.insert(0, request)

    def _make_output(self, scheduled: list[tuple[Request, int]]) -> SchedulerOutput:
        """Package a decision; ``scheduled`` = (request, tokens) with KV already allocated."""
        new_reqs, cached_reqs, num_tokens, spec_tokens = [], [], {}, {}
        for request, n in scheduled:
            req_id = request.request_id
            num_tokens[req_id] = n
            num_drafts = request.num_computed_tokens + n - request.num_tokens
            if num_drafts > 0:
                spec_tokens[req_id] = request.spec_token_ids[:num_drafts]
            if req_id in self._runner_known:
                new_block_ids = self._new_block_ids(request)
                cached_reqs.append(CachedRequestData(
                    req_id, new_block_ids, request.num_computed_tokens, self._sent_blocks[req_id]))
            else:
                self._runner_known.add(req_id)
                block_ids = self.kv_cache_manager.get_block_ids(req_id)
                self._sent_blocks[req_id] = len(block_ids)
                new_reqs.append(NewRequestData(
                    req_id, list(request.all_token_ids), request.num_prompt_tokens,
                    request.sampling_params, list(block_ids), request.num_computed_tokens))
        output = SchedulerOutput(
            new_reqs, cached_reqs, num_tokens, sum(num_tokens.values()),
            self._finished_req_ids, self._preempted_req_ids, scheduled_spec_decode_tokens=spec_tokens,
        )
        self._finished_req_ids, self._preempted_req_ids = set(), set()
        return output

    def _new_block_ids(self, request: Request) -> list[int]:
        block_ids = self.kv_cache_manager.get_block_ids(request.request_id)
        sent = self._sent_blocks.get(request.request_id, 0)
        self._sent_blocks[request.request_id] = len(block_ids)
        return list(block_ids[sent:])

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           runner_output: ModelRunnerOutput) -> list[EngineCoreOutput]:
        """Advance computed tokens, append sampled tokens, finish and free stopped requests."""
        outputs: list[EngineCoreOutput] = []
        for req_id, error in runner_output.failed_req_ids.items():
            outputs.extend(self.fail_requests([req_id], error))
        for req_id, (position, entries) in runner_output.prompt_logprobs.items():
            request = self.requests.get(req_id)
            if request is not None:  # after a preemption the prompt is recomputed: keep each position once
                request.prompt_logprobs.extend(entries[len(request.prompt_logprobs) + 1 - position:])
        for req_id, n in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue  # aborted while the step ran, or failed in it
            request.num_computed_tokens += n
            sampled = runner_output.sampled_token_ids.get(req_id)
            if not sampled:
                continue  # mid-prefill: nothing sampled yet
            num_drafts = len(scheduler_output.scheduled_spec_decode_tokens.get(req_id, ()))
            num_rejected = num_drafts + 1 - len(sampled)
            if num_drafts:
                request.num_computed_tokens -= num_rejected  # their KV slots hold rejected drafts
                self.spec_decoding_stats.observe(num_drafts, num_drafts - num_rejected)
            first = request.num_output_tokens == 0 and request.sampling_params.prompt_logprobs is not None
            emitted = self._append_tokens(request, sampled)
            stopped = request.is_finished()
            outputs.append(EngineCoreOutput(
                req_id, emitted, runner_output.logprobs.get(req_id, [])[:len(emitted)],
                request.get_finished_reason(), request.stop_reason,
                max(request.num_cached_tokens, 0), prompt_logprobs=request.prompt_logprobs if first else None,
            ))
            if stopped:
                self.running.remove(request)
                self._free_request(request)
                continue
            request.spec_token_ids = runner_output.spec_token_ids.get(req_id, [])
            if num_drafts and num_rejected:
                self.kv_cache_manager.trim(request)
                self._sent_blocks[req_id] = min(self._sent_blocks.get(req_id, 0),
                                                len(self.kv_cache_manager.get_block_ids(req_id)))
        return outputs

    @staticmethod
    def _append_tokens(request: Request, token_ids: list[int]) -> list[int]:
        """Append tokens one at a time until one ends the request; returns those appended."""
        for i, token in enumerate(token_ids):
            request.append_output_token_ids([token])
            stopped = check_stop(request, token)
            if not stopped and request.structured_output_request is not None:
                stopped = advance_grammar(request, token)
            if stopped:
                return token_ids[:i + 1]
        return token_ids
