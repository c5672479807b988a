"""``uni``: one model runner in the engine core's own process (vLLM's ``UniProcExecutor``)."""

from __future__ import annotations

from folo_core.executor.abstract import Executor, WorkerSpec
from folo_core.quantization import WeightMemory
from folo_core.registry import SelectionContext
from folo_core.sched.output import ModelRunnerOutput, SchedulerOutput
from folo_core.worker.model_runner import ModelRunner


class UniProcExecutor(Executor):
    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        self.model_runner = ModelRunner(spec.config, spec.attn_backend, spec.sampler_cls(), spec.model_loader,
                                        spec.quant_config, spec.proposer)

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        size = ctx.options.get("tensor_parallel_size", 1)
        return [] if size == 1 else [f"runs one rank (tensor_parallel_size={size})"]

    def determine_num_blocks(self) -> int:
        return self.model_runner.determine_num_blocks()

    def initialize(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)

    @property
    def weight_memory(self) -> WeightMemory:
        return self.model_runner.weight_memory
