"""``EngineCoreClient``: the front end's only way to engine cores (vLLM v1's name and seam).

``LLMEngine`` (tokenizing, detokenizing, ``n > 1`` fan-out) talks to cores through
this interface and nothing else, and gets the cores' stats with their replies
instead of reading a scheduler. Two kinds:

- ``EngineCore`` itself, in the caller's process (the default of ``LLM``): in one
  process the core is its own client (vLLM wraps it in an ``InprocClient``; here
  the wrapper would only forward), so there are no copies and no pipes.
- ``MPClient``: ``data_parallel_size`` cores, each in a process of its own
  (``EngineCoreProc``), or with ``data_parallel_backend="ray"`` each a Ray actor
  on any node of a cluster (``ray_core.py``). A new request goes to the live replica with the fewest
  outstanding tokens (prompt plus tokens still to generate), or with
  ``data_parallel_routing="prefix"`` to the replica its first KV block hashes to,
  so requests that share a prefix meet in one prefix cache. A step sends
  ``step`` to every replica with work, then collects the replies, so replicas
  compute at the same time. With one replica this is how ``folo serve`` keeps
  the step loop off the GIL its HTTP handling and detokenizing use.

A replica that dies fails only its own requests (``finish_reason="error"``,
with the exit code); the others go on, and ``health()`` reports the loss.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

from folo_core.config import EngineConfig
from folo_core.engine.core_proc import CoreHandle, EngineCoreProc
from folo_core.engine.errors import EngineDeadError
from folo_core.engine.selection import SelectedPlugins, selection_context
from folo_core.engine.stats import EngineStats
from folo_core.kv_cache.interface import PrefixCacheStats
from folo_core.logger import init_logger
from folo_core.plugins import FoloPluginManager
from folo_core.quantization import WeightMemory
from folo_core.sampling_params import SamplingParams
from folo_core.sched.output import EngineCoreOutput
from folo_core.spec_decode.metrics import SpecDecodingStats
from folo_core.structured_output.manager import StructuredOutputManager

logger = init_logger(__name__)


@dataclass
class CoreHealth:
    """How many engine cores serve, and why the others stopped."""

    num_cores: int
    num_alive: int
    errors: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return self.num_alive < self.num_cores


class EngineCoreClient(ABC):
    """Add, abort and step requests on one or more engine cores."""

    selected: SelectedPlugins  # what the cores run (every replica picks the same)
    structured_output_manager: StructuredOutputManager  # the front end validates grammars with it

    @abstractmethod
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, cache_salt: str | None = None) -> None:
        """Queue a request on a core; the core's checks (length, id in use, overload) raise here."""

    @abstractmethod
    def abort_requests(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def step(self) -> list[EngineCoreOutput]:
        """One step of every core with work; their outputs together."""

    @abstractmethod
    def has_unfinished_requests(self) -> bool: ...

    @abstractmethod
    def get_num_unfinished_requests(self) -> int: ...

    @abstractmethod
    def reset_prefix_cache(self) -> bool: ...

    @abstractmethod
    def get_stats(self) -> EngineStats:
        """The cores' state after their last step (summed over replicas)."""

    def health(self) -> CoreHealth:
        return CoreHealth(1, 1)

    @abstractmethod
    def shutdown(self) -> None: ...


def _sum_per_pos(lists: list[list[int]]) -> list[int]:
    width = max(map(len, lists), default=0)
    return [sum(counts[i] for counts in lists if i < len(counts)) for i in range(width)]


def merge_stats(stats: list[EngineStats]) -> EngineStats:
    """Replicas' stats as one engine's: counts and memory summed, KV use over all blocks."""
    num_blocks = sum(s.num_blocks for s in stats)
    spec = [s.spec_decoding for s in stats]
    return EngineStats(
        sum(s.num_running for s in stats), sum(s.num_waiting for s in stats),
        sum(s.kv_cache_usage * s.num_blocks for s in stats) / num_blocks if num_blocks else 0.0, num_blocks,
        PrefixCacheStats(sum(s.prefix_cache.queries for s in stats), sum(s.prefix_cache.hits for s in stats),
                         sum(s.prefix_cache.requests for s in stats)),
        WeightMemory(sum(s.weight_memory.total_bytes for s in stats),
                     sum(s.weight_memory.quantized_bytes for s in stats),
                     sum(s.weight_memory.quantized_dense_bytes for s in stats)),
        SpecDecodingStats(sum(d.num_drafts for d in spec), sum(d.num_draft_tokens for d in spec),
                          sum(d.num_accepted_tokens for d in spec),
                          _sum_per_pos([d.num_accepted_tokens_per_pos for d in spec])))


@dataclass(eq=False)
class _Replica:
    proc: CoreHandle
    index: int
    outstanding: dict[str, int] = field(default_factory=dict)  # request id -> tokens still to process
    error: str | None = None  # why it stopped
    num_routed: int = 0  # requests sent to it since start

    @property
    def load(self) -> int:
        return sum(self.outstanding.values())


class MPClient(EngineCoreClient):
    """``data_parallel_size`` engine cores in processes, one front end."""

    def __init__(self, config: EngineConfig, plugins: FoloPluginManager, tokenizer: Any) -> None:
        if not plugins.portable:
            raise ValueError("engine cores in other processes load their plugins from the 'folo' entry-point "
                             "group; a hand-built plugin manager cannot travel to them (use one process, "
                             "data_parallel_size=1, or install the plugins as a package)")
        parallel = config.parallel
        size = parallel.data_parallel_size
        self.routing = parallel.data_parallel_routing
        self.block_size = config.cache.block_size
        names = [f"data-parallel replica {i}" if size > 1 else "engine core process" for i in range(size)]
        self.replicas: list[_Replica] = []
        self._release = lambda: None  # frees what placed the replicas (a Ray placement group)
        try:
            if parallel.data_parallel_backend == "ray":
                from folo_core.engine.ray_core import start_ray_cores

                handles, self._release = start_ray_cores(config, names)
            else:
                threads = max(1, (os.cpu_count() or 1) // (size * parallel.tensor_parallel_size)) if size > 1 else None
                handles = [EngineCoreProc(config, name, threads) for name in names]
            self.replicas = [_Replica(handle, i) for i, handle in enumerate(handles)]
            infos = [r.proc.wait_ready() for r in self.replicas]
        except BaseException:
            self.shutdown()
            raise
        self.selected = infos[0].selected
        self.max_request_tokens = infos[0].max_request_tokens
        self.structured_output_manager = StructuredOutputManager(
            plugins.registry("structured_output_backend"), config.model.structured_outputs_backend,
            selection_context(config), tokenizer, config.model.hf_config.vocab_size)
        self._owner: dict[str, _Replica] = {}
        logger.info("%d engine core(s) (%s, pids %s), routing by %s", size, parallel.data_parallel_backend,
                    ", ".join(str(info.pid) for info in infos), self.routing)

    # ----- routing -----

    def _live(self) -> list[_Replica]:
        return [r for r in self.replicas if r.error is None]

    def _route(self, prompt_token_ids: list[int], cache_salt: str | None, live: list[_Replica]) -> _Replica:
        """Least outstanding tokens; or, routing by prefix, the replica the first block hashes to
        (among the live ones, if it died)."""
        if self.routing == "prefix" and len(prompt_token_ids) >= self.block_size:
            key = hash((cache_salt, tuple(prompt_token_ids[:self.block_size])))
            home = self.replicas[key % len(self.replicas)]
            return home if home in live else live[key % len(live)]
        return min(live, key=lambda r: (r.load, r.index))

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, cache_salt: str | None = None) -> None:
        if request_id in self._owner:
            raise ValueError(f"request id {request_id!r} is already in use")
        while True:
            live = self._live()
            if not live:
                raise self._all_dead()
            replica = self._route(prompt_token_ids, cache_salt, live)
            try:
                replica.proc.call("add_request", request_id, prompt_token_ids, params, arrival_time, priority,
                                  cache_salt)
                break
            except EngineDeadError as exc:
                self._lose(replica, exc)  # its requests fail at the next step; try another replica
        max_tokens = params.max_tokens or self.max_request_tokens - len(prompt_token_ids)
        replica.outstanding[request_id] = len(prompt_token_ids) + max_tokens
        replica.num_routed += 1
        self._owner[request_id] = replica

    def abort_requests(self, request_ids: list[str]) -> None:
        by_replica: dict[int, list[str]] = {}
        for request_id in request_ids:
            replica = self._owner.pop(request_id, None)
            if replica is not None:
                replica.outstanding.pop(request_id, None)
                by_replica.setdefault(replica.index, []).append(request_id)
        for index, ids in by_replica.items():
            replica = self.replicas[index]
            if replica.error is None:
                try:
                    replica.proc.call("abort_requests", ids)
                except EngineDeadError as exc:
                    self._lose(replica, exc)

    # ----- stepping -----

    def step(self) -> list[EngineCoreOutput]:
        busy = [r for r in self._live() if r.outstanding]
        sent = []
        for replica in busy:
            try:
                replica.proc.send("step")
                sent.append(replica)
            except EngineDeadError as exc:
                self._lose(replica, exc)
        outputs: list[EngineCoreOutput] = []
        for replica in sent:
            try:
                step_outputs: list[EngineCoreOutput] = replica.proc.recv()
            except EngineDeadError as exc:
                self._lose(replica, exc)
                continue
            for output in step_outputs:
                self._account(replica, output)
            outputs.extend(step_outputs)
        return outputs + self._fail_lost()

    def _account(self, replica: _Replica, output: EngineCoreOutput) -> None:
        if output.finished:
            replica.outstanding.pop(output.request_id, None)
            self._owner.pop(output.request_id, None)
        elif output.request_id in replica.outstanding:
            replica.outstanding[output.request_id] -= len(output.new_token_ids)

    def _all_dead(self) -> EngineDeadError:
        return EngineDeadError("every engine core died: " + "; ".join(r.error or "" for r in self.replicas))

    def _lose(self, replica: _Replica, exc: BaseException) -> None:
        if replica.error is None:
            replica.error = str(exc)
            logger.error("%s; failing its %d request(s), %d replica(s) left", exc, len(replica.outstanding),
                         len(self._live()))

    def _fail_lost(self) -> list[EngineCoreOutput]:
        """An error output for every request of a replica that died (each once)."""
        failed = []
        for replica in self.replicas:
            if replica.error is not None and replica.outstanding:
                for request_id in replica.outstanding:
                    self._owner.pop(request_id, None)
                    failed.append(EngineCoreOutput(request_id, [], finish_reason="error", error=replica.error))
                replica.outstanding.clear()
        return failed

    def has_unfinished_requests(self) -> bool:
        return bool(self._owner)  # every replica's outstanding requests are in it

    def get_num_unfinished_requests(self) -> int:
        return len(self._owner)

    def reset_prefix_cache(self) -> bool:
        results = []
        for replica in self._live():
            try:
                results.append(replica.proc.call("reset_prefix_cache"))
            except EngineDeadError as exc:
                self._lose(replica, exc)
        return all(results)

    def get_stats(self) -> EngineStats:
        stats = [r.proc.stats for r in self._live()]
        if not stats:
            raise self._all_dead()
        return merge_stats(stats) if len(stats) > 1 else replace(stats[0])

    def health(self) -> CoreHealth:
        for replica in self._live():
            if not replica.proc.alive:
                self._lose(replica, replica.proc.dead_error())
        return CoreHealth(len(self.replicas), len(self._live()), [r.error for r in self.replicas if r.error])

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.proc.shutdown()
        self._release()
        self._release = lambda: None
