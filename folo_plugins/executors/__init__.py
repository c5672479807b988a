"""Built-in executors: ``uni`` (one model runner in the engine's process), ``mp`` (a process per
tensor-parallel rank)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.executors.multiproc import MultiprocExecutor
from folo_plugins.executors.uniproc import UniProcExecutor


@hookimpl
def register_executors(register) -> None:
    register("uni", UniProcExecutor)
    register("mp", MultiprocExecutor)
