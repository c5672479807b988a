"""Plugin ``continuous``: the continuous-batching scheduler (the default)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.continuous.scheduler import ContinuousScheduler


@hookimpl
def register_schedulers(register):
    register("continuous", ContinuousScheduler, priority=100)
