"""Built-in executors: ``uni`` (one model runner in the engine's process), ``mp`` (a process per
tensor-parallel rank), ``ray`` (a Ray actor per rank; only by name, so ``auto`` never needs Ray)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.executors.multiproc import MultiprocExecutor
from folo_plugins.executors.ray_executor import RayDistributedExecutor
from folo_plugins.executors.uniproc import UniProcExecutor


@hookimpl
def register_executors(register) -> None:
    register("uni", UniProcExecutor)
    register("mp", MultiprocExecutor)
    register("ray", RayDistributedExecutor, priority=-100)
