"""Plugin ``sampler``: the default vectorised sampler."""

from folo_core.hookspecs import hookimpl
from folo_plugins.sampler.sampler import DefaultSampler


@hookimpl
def register_samplers(register):
    register("default", DefaultSampler, priority=100)
