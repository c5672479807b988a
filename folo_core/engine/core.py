"""``EngineCore``: builds the picked plugins (``selection.py``), owns scheduler and executor, runs the step loop.

    scheduler_output = scheduler.schedule()
    runner_output    = executor.execute_model(scheduler_output)
    engine_outputs   = scheduler.update_from_output(scheduler_output, runner_output)
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from folo_core.config import EngineConfig
from folo_core.engine.core_client import EngineCoreClient
from folo_core.engine.selection import select_plugins
from folo_core.engine.stats import EngineStats
from folo_core.executor.abstract import WorkerSpec
from folo_core.hf_utils import dynamic_rope_scaling, kv_sliding_window, layer_sliding_windows
from folo_core.logger import init_logger
from folo_core.plugins import FoloPluginManager
from folo_core.request import Request, RequestStatus
from folo_core.sampling_params import SamplingParams
from folo_core.sched.output import EngineCoreOutput
from folo_core.structured_output.manager import StructuredOutputManager

logger = init_logger(__name__)

_GRAMMAR_POLL_S = 0.01


class EngineCore(EngineCoreClient):
    """The scheduler, KV manager and executor of one replica; in its own process, its own client."""

    def __init__(self, config: EngineConfig, plugins: FoloPluginManager, tokenizer: Any = None) -> None:
        self.config = config
        picks = select_plugins(config, plugins)
        attn_entry, kv_entry, quant_config = picks.attention_backend, picks.kv_cache_manager, picks.quant_config
        enable_caching = picks.enable_prefix_caching

        proposer = picks.proposer.impl(config.scheduler.speculative_config) if picks.proposer else None
        self.executor = picks.executor.impl(WorkerSpec(config, attn_entry.impl, picks.sampler.impl,
                                                       picks.model.impl, quant_config, proposer))
        self.num_blocks = self.executor.determine_num_blocks()
        self.executor.initialize(self.num_blocks)
        extra_key = f"{config.model.model}|{config.model.dtype}|{quant_config.hash_key() if quant_config else ''}"
        self.kv_cache_manager = kv_entry.impl(
            self.num_blocks, config.cache.block_size, enable_caching, extra_key,
            sliding_window=kv_sliding_window(layer_sliding_windows(config.model.hf_config)))
        self.scheduler = picks.scheduler.impl(config.scheduler, config.cache, self.kv_cache_manager)
        self.selected = picks.summary()
        self.enable_prefix_caching = enable_caching
        self.dynamic_rope = dynamic_rope_scaling(config.model.hf_config)  # (original length, factor) or None
        self.structured_output_manager = StructuredOutputManager(
            plugins.registry("structured_output_backend"), config.model.structured_outputs_backend, picks.ctx,
            tokenizer, config.model.hf_config.vocab_size)
        logger.info("plugins: %s; prefix caching %s", self.selected, "on" if enable_caching else "off")

    @property
    def max_request_tokens(self) -> int:
        """Prompt + output limit: the model length or what the whole KV cache holds."""
        return min(self.config.model.max_model_len, self.num_blocks * self.config.cache.block_size)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, cache_salt: str | None = None) -> None:
        limit = self.max_request_tokens
        n = len(prompt_token_ids)
        if n > limit:
            raise ValueError(
                f"the prompt ({n} tokens) can never fit in the KV cache, which holds {limit} tokens "
                f"({self.num_blocks} blocks of {self.config.cache.block_size}); raise "
                "kv_cache_memory_bytes or num_gpu_blocks_override")
        if request_id in self.scheduler.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        max_waiting = self.config.scheduler.max_waiting_requests
        if max_waiting is not None and len(self.scheduler.waiting) >= max_waiting:
            raise OverflowError(f"server overloaded: {max_waiting} requests already waiting")
        max_tokens = max(1, limit - n)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        if self.dynamic_rope is not None and n > self.dynamic_rope[0]:
            # Dynamic NTK rotary turns such a prompt's keys with its own length's base, so its
            # cached blocks can serve only prompts of the same length.
            cache_salt = f"{cache_salt or ''}\0dynamic rope, prompt of {n} tokens"
        request = Request(request_id, prompt_token_ids, params, max_tokens, arrival_time, priority, cache_salt)
        if params.structured_outputs is not None:
            request.structured_output_request = self.structured_output_manager.grammar_init(
                params.structured_outputs)
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        """One scheduling decision through the runner. If the runner fails, every request of
        the decision finishes with ``finish_reason="error"`` (their KV and runner state may be
        half-updated, so none of them can go on); requests outside it are untouched, and
        scheduler, KV manager and runner still agree on each one's blocks."""
        if not self.scheduler.has_unfinished_requests():
            return []
        outputs = self._wait_for_grammars()
        scheduler_output = self.scheduler.schedule()
        grammars = self.scheduler.structured_output_grammars(scheduler_output)
        if grammars:
            scheduler_output.structured_output_request_ids, scheduler_output.grammar_bitmask = \
                self.structured_output_manager.grammar_bitmask(grammars,
                                                               scheduler_output.scheduled_spec_decode_tokens)
        try:
            runner_output = self.executor.execute_model(scheduler_output)
        except Exception as exc:
            logger.error("engine step failed (%s: %s); failing the %d request(s) it ran", type(exc).__name__,
                         exc, len(scheduler_output.num_scheduled_tokens), exc_info=exc)
            self.scheduler.resend_dropped(scheduler_output)
            return outputs + self.scheduler.fail_requests(scheduler_output.num_scheduled_tokens,
                                                          f"engine step failed: {type(exc).__name__}: {exc}")
        return outputs + self.scheduler.update_from_output(scheduler_output, runner_output)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    def get_stats(self) -> EngineStats:
        """Queue sizes, KV use, prefix-cache and speculative-decoding totals, weight memory."""
        scheduler, manager = self.scheduler, self.kv_cache_manager
        return EngineStats(len(scheduler.running), len(scheduler.waiting), manager.usage, self.num_blocks,
                           manager.prefix_cache_stats, self.executor.weight_memory,
                           scheduler.spec_decoding_stats)

    def shutdown(self) -> None:
        """Stop the executor's workers and the grammar compiler threads."""
        self.executor.shutdown()
        self.structured_output_manager.shutdown()

    def _wait_for_grammars(self) -> list[EngineCoreOutput]:
        """Admit requests whose grammar compiled. If nothing else can run, wait a little for
        one, rather than spin: no running request is ever delayed by a compiling grammar."""
        scheduler = self.scheduler
        if scheduler.waiting_for_fsm and not (scheduler.waiting or scheduler.running):
            futures.wait([r.structured_output_request.future for r in scheduler.waiting_for_fsm],
                         timeout=_GRAMMAR_POLL_S, return_when=futures.FIRST_COMPLETED)
        return scheduler.promote_ready_grammars() if scheduler.waiting_for_fsm else []
