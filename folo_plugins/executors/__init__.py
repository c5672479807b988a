"""Built-in executors: ``uni`` (one model runner in the engine's process)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.executors.uniproc import UniProcExecutor


@hookimpl
def register_executors(register) -> None:
    register("uni", UniProcExecutor)
