"""Continuous batching (vLLM v1's scheduler): a token budget per step, no phases.

Running requests are served first, each getting the tokens it still lacks (one
for a decode, plus its draft tokens with speculative decoding, a chunk for a
prefill) until the budget runs out; when the KV
cache is full the lowest-priority running request is preempted by recompute.
Waiting requests are admitted with whatever budget is left, starting after any
cached prefix.
"""

from __future__ import annotations

from folo_core.request import Request, RequestStatus
from folo_core.sched.interface import Scheduler
from folo_core.sched.output import SchedulerOutput


class ContinuousScheduler(Scheduler):
    @property
    def _priority(self) -> bool:
        return self.scheduler_config.scheduling_policy == "priority"

    def _tokens_wanted(self, request: Request, num_computed: int, budget: int) -> int:
        n = self.num_tokens_with_spec(request) - num_computed
        threshold = self.scheduler_config.long_prefill_token_threshold
        if threshold and n > threshold:
            n = threshold
        return min(n, budget)

    def _pick_victim(self) -> Request:
        if self._priority:
            return max(self.running, key=Request.sort_key)
        return self.running[-1]

    def schedule(self) -> SchedulerOutput:
        budget = self.scheduler_config.max_num_batched_tokens
        scheduled: dict[str, tuple[Request, int]] = {}
        preempted = False

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            n = self._tokens_wanted(request, request.num_computed_tokens, budget)
            while self.kv_cache_manager.allocate_slots(request, n) is None:
                victim = self._pick_victim()
                position = self.running.index(victim)
                self.running.pop(position)
                if position < index:  # the priority policy may pick one served already
                    index -= 1
                    budget += scheduled.pop(victim.request_id)[1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                scheduled[request.request_id] = (request, n)
                budget -= n
                index += 1
            # If ``request`` preempted itself, ``running`` shifted and ``index`` is already next.

        if not preempted:
            self._admit_waiting(budget, scheduled)
        return self._make_output(list(scheduled.values()))

    def _admit_waiting(self, budget: int, scheduled: dict[str, tuple[Request, int]]) -> None:
        config = self.scheduler_config
        if self._priority:
            self.waiting.sort(key=Request.sort_key)
        while self.waiting and budget > 0 and len(self.running) < config.max_num_seqs:
            request = self.waiting[0]
            hit_blocks, num_hit_tokens = self.kv_cache_manager.get_computed_blocks(request)
            n = self._tokens_wanted(request, num_hit_tokens, budget)
            if not config.enable_chunked_prefill and num_hit_tokens + n < request.num_tokens:
                break  # the whole prompt must fit in this step
            if self.kv_cache_manager.allocate_slots(request, n, hit_blocks) is None:
                break
            self.waiting.pop(0)
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            scheduled[request.request_id] = (request, n)
            budget -= n
