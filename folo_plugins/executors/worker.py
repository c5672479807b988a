"""``TPWorker``: one tensor-parallel rank, whatever starts it (an ``mp`` process or a ``ray`` actor).

It joins the torch.distributed group (gloo on CPU, nccl on CUDA), builds its
``ModelRunner`` over its shard of the model, and runs the executor's calls by
name. Only rank 0's results go back (every rank samples from the same gathered
logits with the same seeds, so their batches stay identical without sending
tokens back), except the KV block counts, of which the executor takes the
smallest.
"""

from __future__ import annotations

import os
import socket
import traceback
from abc import abstractmethod
from typing import Any

import torch

from folo_core.config import EngineConfig
from folo_core.executor.abstract import Executor, WorkerSpec
from folo_core.quantization import WeightMemory
from folo_core.sched.output import ModelRunnerOutput, SchedulerOutput

Reply = tuple[str, Any]  # ("ok", result) or ("error", message)


def free_port() -> int:
    """A TCP port free on this node now, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def dist_backend(config: EngineConfig) -> str:
    return "nccl" if config.model.resolved_device() == "cuda" else "gloo"


class TPWorker:
    def __init__(self, spec: WorkerSpec, rank: int, world_size: int, init_method: str, backend: str,
                 num_threads: int) -> None:
        from folo_core.distributed.parallel_state import init_tensor_parallel
        from folo_core.worker.model_runner import ModelRunner

        torch.set_num_threads(num_threads)
        init_tensor_parallel(rank, world_size, init_method, backend)
        self.rank = rank
        self.runner = ModelRunner(spec.config, spec.attn_backend, spec.sampler_cls(), spec.model_loader,
                                  spec.quant_config, spec.proposer)
        self.methods = {"determine_num_blocks": self.runner.determine_num_blocks,
                        "initialize": self.runner.initialize_kv_cache,
                        "execute_model": self.runner.execute_model}

    @property
    def weight_memory(self) -> WeightMemory:
        return self.runner.weight_memory

    def call(self, name: str, args: tuple) -> Reply:
        try:
            result = self.methods[name](*args)
        except BaseException as exc:
            return "error", f"rank {self.rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return "ok", result if self.rank == 0 or name == "determine_num_blocks" else None


def start_worker(spec: WorkerSpec, rank: int, world_size: int, init_method: str,
                 backend: str) -> tuple[TPWorker | None, Reply]:
    """Build a rank's worker with its share of this node's cores; the reply tells the executor
    its weight memory, or why the rank could not start."""
    try:
        worker = TPWorker(spec, rank, world_size, init_method, backend, max(1, (os.cpu_count() or 1) // world_size))
    except BaseException as exc:
        return None, ("error", f"rank {rank} failed to start: {type(exc).__name__}: {exc}")
    return worker, ("ok", worker.weight_memory)


def gather_replies(replies: list[Reply]) -> list[Any]:
    """Every rank's result in rank order; raises with every rank's error."""
    errors = [value for status, value in replies if status == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    return [value for _, value in replies]


class RankExecutor(Executor):
    """An executor over ``TPWorker`` ranks: every call goes to all of them (``_call``), rank 0's
    result is the answer. Subclasses say how the ranks are reached and set ``_weight_memory``."""

    _weight_memory: WeightMemory

    @abstractmethod
    def _call(self, name: str, *args: Any) -> list[Any]:
        """Every rank's result of ``name(*args)``, in rank order; raises with the ranks' errors."""

    def determine_num_blocks(self) -> int:
        return min(self._call("determine_num_blocks"))

    def initialize(self, num_blocks: int) -> None:
        self._call("initialize", num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self._call("execute_model", scheduler_output)[0]

    @property
    def weight_memory(self) -> WeightMemory:
        return self._weight_memory
