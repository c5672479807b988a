"""The executor contract (vLLM v1's ``Executor``): the engine core's only way to the model.

``EngineCore`` builds the plugins it picked into a ``WorkerSpec`` and hands it to
the executor selected by ``distributed_executor_backend``; from then on it calls
``determine_num_blocks``, ``initialize`` and, each step, ``execute_model``. An
executor decides where the model runners live: ``uni`` runs one in the engine's
process; an executor for tensor or pipeline parallelism starts one per rank and
returns the driver rank's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from folo_core.config import EngineConfig
from folo_core.quantization import QuantizationConfig, WeightMemory
from folo_core.registry import SelectionContext
from folo_core.sched.output import ModelRunnerOutput, SchedulerOutput
from folo_core.spec_decode.proposer import Proposer


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its model runner (all picked by the engine core)."""

    config: EngineConfig
    attn_backend: type
    sampler_cls: type
    model_loader: Any
    quant_config: QuantizationConfig | None
    proposer: Proposer | None


class Executor(ABC):
    """Registered by name with ``register_executors``; selected by ``distributed_executor_backend``."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        """Why this executor cannot run the configured sizes (``ctx.options``: tensor/data
        parallel sizes); empty if it can."""
        return []

    @abstractmethod
    def determine_num_blocks(self) -> int:
        """KV blocks every worker can hold (the smallest, with several)."""

    @abstractmethod
    def initialize(self, num_blocks: int) -> None:
        """Allocate ``num_blocks`` KV blocks on every worker (and compile, if configured)."""

    @abstractmethod
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step on every worker; the driver's output."""

    @property
    @abstractmethod
    def weight_memory(self) -> WeightMemory:
        """What the model's tensors take (one worker's share)."""

    def shutdown(self) -> None:
        """Stop the workers; an in-process executor has nothing to stop."""
