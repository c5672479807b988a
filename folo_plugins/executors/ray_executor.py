"""``ray``: one Ray actor per tensor-parallel rank (vLLM's ``RayDistributedExecutor``; ``folovllm[ray]``).

The ranks are placed by one placement group (a bundle of one CPU, or one GPU on
CUDA, per rank; PACK, so they share a node when one can hold them and span nodes
when none can). Rank 0's actor names the rendezvous (its node's IP and a port
free there), every actor builds a ``TPWorker`` on it, and each call goes to all
ranks with its arguments stored once in Ray's object store; rank 0's result comes
back. A rank that raises or whose actor is lost fails the call with its error,
which the engine core turns into failed requests. The driver joins the Ray cluster
``RAY_ADDRESS`` names, or the one already initialised, or starts a local one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from folo_core.executor.abstract import WorkerSpec
from folo_core.logger import init_logger
from folo_core.quantization import WeightMemory
from folo_core.registry import SelectionContext
from folo_plugins.executors.worker import (Reply, RankExecutor, TPWorker, dist_backend, free_port, gather_replies,
                                          start_worker)

logger = init_logger(__name__)


class _RayWorker:
    """The actor: a ``TPWorker`` once ``start`` ran."""

    def __init__(self) -> None:
        self.worker: TPWorker | None = None

    def rendezvous(self) -> str:
        import ray

        return f"tcp://{ray.util.get_node_ip_address()}:{free_port()}"

    def start(self, spec: WorkerSpec, rank: int, world_size: int, init_method: str, backend: str) -> Reply:
        self.worker, reply = start_worker(spec, rank, world_size, init_method, backend)
        return reply

    def call(self, name: str, *args: Any) -> Reply:
        return self.worker.call(name, args)


class RayDistributedExecutor(RankExecutor):
    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        config = spec.config
        self.world_size = config.parallel.tensor_parallel_size
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        resource = "GPU" if config.model.resolved_device() == "cuda" else "CPU"
        self.group = placement_group([{resource: 1}] * self.world_size, strategy="PACK")
        self.actors: list[Any] = []
        try:
            ray.get(self.group.ready(), timeout=120)
            actor_cls = ray.remote(_RayWorker)
            self.actors = [actor_cls.options(
                num_cpus=1 if resource == "CPU" else 0, num_gpus=1 if resource == "GPU" else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank),
            ).remote() for rank in range(self.world_size)]
            init_method = ray.get(self.actors[0].rendezvous.remote())
            backend = dist_backend(config)
            spec_ref = ray.put(spec)
            logger.info("ray executor: %d ranks (%s, %s)", self.world_size, backend, init_method)
            self._weight_memory: WeightMemory = self._gather(
                [a.start.remote(spec_ref, rank, self.world_size, init_method, backend)
                 for rank, a in enumerate(self.actors)])[0]
        except BaseException:
            self.shutdown()
            raise

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        # Whether Ray is installed, not importing it: ``auto`` asks this at every engine start,
        # and importing Ray takes about 0.6 s on a 2-core CPU.
        if importlib.util.find_spec("ray") is None:
            return ["Ray is not installed (pip install 'folovllm[ray]')"]
        return []

    def _gather(self, refs: list[Any]) -> list[Any]:
        replies = []
        for rank, ref in enumerate(refs):
            try:
                replies.append(self._ray.get(ref))
            except self._ray.exceptions.RayError as exc:
                replies.append(("error", f"rank {rank} is lost ({type(exc).__name__})"))
        return gather_replies(replies)

    def _call(self, name: str, *args: Any) -> list[Any]:
        arg_refs = [self._ray.put(arg) for arg in args]  # stored once, read by every rank
        return self._gather([actor.call.remote(name, *arg_refs) for actor in self.actors])

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
