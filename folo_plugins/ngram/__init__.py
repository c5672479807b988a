"""Built-in proposer: n-gram prompt lookup (vLLM's ``ngram`` method)."""

from folo_core.hookspecs import hookimpl
from folo_plugins.ngram.proposer import NgramProposer


@hookimpl
def register_proposers(register) -> None:
    register("ngram", NgramProposer)
