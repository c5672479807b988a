"""The reference scheduler: whole prompts, then decode each request to completion.

A request is admitted only when the KV cache can hold it at its full length
(prompt + max_tokens), so it never needs preemption.
"""

from __future__ import annotations

from folo_core.request import Request, RequestStatus
from folo_core.sched.interface import Scheduler
from folo_core.sched.output import SchedulerOutput
from folo_core.utils import cdiv


class SimpleScheduler(Scheduler):
    def _blocks_at_full_length(self, request: Request) -> int:
        # The last sampled token is never fed back, so it needs no KV slot.
        tokens = request.num_prompt_tokens + request.max_tokens - 1
        return cdiv(tokens, self.kv_cache_manager.block_size)

    def _reserved_blocks(self) -> int:
        """Blocks running requests will still take before they finish."""
        manager = self.kv_cache_manager
        return sum(self._blocks_at_full_length(r) - len(manager.get_block_ids(r.request_id))
                   for r in self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.scheduler_config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        for request in self.running:
            n = request.num_tokens - request.num_computed_tokens
            if self.kv_cache_manager.allocate_slots(request, n) is None:
                raise RuntimeError(f"KV reserved for {request.request_id!r} was not available")
            scheduled.append((request, n))
            budget -= n
        free = self.kv_cache_manager.num_free_blocks - self._reserved_blocks()
        while self.waiting and len(self.running) < self.scheduler_config.max_num_seqs:
            request = self.waiting[0]
            n = request.num_tokens
            if (scheduled and n > budget) or self._blocks_at_full_length(request) > free:
                break
            self.kv_cache_manager.allocate_slots(request, n)
            free -= self._blocks_at_full_length(request)
            self.waiting.pop(0)
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_cached_tokens = 0
            scheduled.append((request, n))
            budget -= n
        return self._make_output(scheduled)
