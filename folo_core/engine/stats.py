"""Per-step serving statistics and the stat-logger contract (vLLM v1's ``metrics/stats.py``).

The async engine fills one ``IterationStats`` per loop turn on the engine thread
and hands it, with the engine core's ``EngineStats``, to every stat logger; a
logger (Prometheus, a log line) only reads them, so it never touches the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from folo_core.kv_cache.interface import PrefixCacheStats
from folo_core.outputs import RequestOutput
from folo_core.quantization import WeightMemory
from folo_core.spec_decode.metrics import SpecDecodingStats


@dataclass
class EngineStats:
    """The engine core's state after a step (``EngineCore.get_stats``)."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_blocks: int
    prefix_cache: PrefixCacheStats
    weight_memory: WeightMemory  # what the loaded model's tensors take
    spec_decoding: SpecDecodingStats  # totals since start; zero without speculative_config


@dataclass
class RequestStats:
    """What the async engine remembers about one request between its outputs."""

    arrival_time: float
    last_token_time: float = 0.0
    num_generation_tokens: int = 0


@dataclass
class FinishedRequestStats:
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    e2e_latency: float
    num_generation_tokens: int


@dataclass
class IterationStats:
    """What happened in one engine step: tokens, latencies and finished requests."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    time_per_output_tokens: list[float] = field(default_factory=list)  # inter-token latencies
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)

    def update_from_output(self, output: RequestOutput, req: RequestStats, now: float) -> None:
        """Count one DELTA output (its token ids are only the new ones)."""
        num_new = sum(len(completion.token_ids) for completion in output.outputs)
        if req.num_generation_tokens == 0:
            self.num_prompt_tokens += len(output.prompt_token_ids)
            self.time_to_first_tokens.append(now - req.arrival_time)
        elif now != req.last_token_time:  # the n choices of one request step together: one gap per step
            self.time_per_output_tokens.append(now - req.last_token_time)
        self.num_generation_tokens += num_new
        req.num_generation_tokens += num_new
        req.last_token_time = now
        if output.finished:
            self.finish(req, output.outputs[0].finish_reason or "stop", now)

    def finish(self, req: RequestStats, reason: str, now: float) -> None:
        self.finished_requests.append(FinishedRequestStats(reason, now - req.arrival_time, req.num_generation_tokens))


class StatLoggerBase(ABC):
    """Receives the stats of every engine loop turn, on the engine thread: keep ``record`` cheap."""

    @abstractmethod
    def record(self, engine_stats: EngineStats, iteration_stats: IterationStats) -> None:
        ...
