"""Data-parallel engine cores as Ray actors (``data_parallel_backend="ray"``; ``pip install folovllm[ray]``).

Each replica is an actor running ``EngineCoreServer`` (the same body as a core
process), placed by one placement group with a bundle per replica and the SPREAD
strategy, so on a multi-node cluster the replicas land on different nodes when
they can. Calls are actor method calls whose ``ObjectRef``s are kept in order,
so ``MPClient`` drives actors exactly as it drives processes. The driver joins
the cluster named by ``RAY_ADDRESS`` (``ray start --head`` on the first node),
or one already initialised with ``ray.init``, or starts a local one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from folo_core.config import EngineConfig
from folo_core.engine.core_proc import CoreHandle, EngineCoreServer, Reply, picklable
from folo_core.engine.errors import EngineDeadError


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("data_parallel_backend='ray' needs Ray: pip install 'folovllm[ray]'") from None
    return ray


class _RayEngineCore:
    """The actor: an ``EngineCoreServer``, or the error that kept it from starting."""

    def __init__(self, config: EngineConfig, num_threads: int | None) -> None:
        try:
            self.server: EngineCoreServer | None = EngineCoreServer(config, num_threads)
            self.error: BaseException | None = None
        except BaseException as exc:  # reported by ready(), so the caller sees the real error
            self.server, self.error = None, picklable(exc)

    def ready(self) -> Reply:
        return self.server.ready() if self.server else ("error", self.error, None)

    def handle(self, name: str, args: tuple) -> Reply:
        return self.server.handle(name, args)

    def ping(self) -> bool:
        return True


class RayEngineCore(CoreHandle):
    """The front end's handle on one actor."""

    def __init__(self, actor: Any, name: str) -> None:
        super().__init__(name)
        self.actor = actor
        self._pending: deque[Any] = deque([actor.ready.remote()])
        self._error: str | None = None

    @property
    def alive(self) -> bool:
        if self._error is not None:
            return False
        ray = _ray()
        try:
            ray.get(self.actor.ping.remote(), timeout=30)
            return True
        except ray.exceptions.RayError as exc:
            self._error = f"{type(exc).__name__}"
            return False

    def dead_error(self) -> EngineDeadError:
        return EngineDeadError(f"{self.name} died (Ray actor lost: {self._error or 'unknown'})")

    def send(self, name: str, *args: Any) -> None:
        if self._error is not None:
            raise self.dead_error()
        self._pending.append(self.actor.handle.remote(name, args))

    def _recv_reply(self) -> Reply:
        ray = _ray()
        try:
            return ray.get(self._pending.popleft())
        except ray.exceptions.RayActorError as exc:
            self._error = type(exc).__name__
            raise self.dead_error() from None

    def shutdown(self) -> None:
        if self._error is None:
            self._error = "shut down"
            _ray().kill(self.actor)


def start_ray_cores(config: EngineConfig, names: list[str]) -> tuple[list[RayEngineCore], Any]:
    """One actor per name, placed by one SPREAD placement group; returns them and a cleanup."""
    ray = _ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    cpus = int(ray.available_resources().get("CPU", 1))
    per_replica = max(1, cpus // len(names))
    group = placement_group([{"CPU": per_replica}] * len(names), strategy="SPREAD")
    try:
        ray.get(group.ready(), timeout=120)
    except Exception:
        remove_placement_group(group)
        raise RuntimeError(f"Ray could not place {len(names)} engine cores of {per_replica} CPU(s) each "
                           f"({cpus} CPU(s) available)") from None
    # Each actor is its replica's one rank: "ray" (or "auto") names where the replicas run, not a
    # second layer of actors inside them.
    parallel = config.parallel.model_copy(update={"distributed_executor_backend": "uni"})
    config = config.model_copy(update={"parallel": parallel})
    actor_cls = ray.remote(_RayEngineCore)
    handles = [RayEngineCore(actor_cls.options(
        num_cpus=per_replica, name=None,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
    ).remote(config, per_replica), name) for i, name in enumerate(names)]
    return handles, lambda: remove_placement_group(group)
