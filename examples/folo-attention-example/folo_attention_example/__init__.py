"""Folo plugin ``chunked_online_softmax``: registered through the ``folo`` entry-point group."""

from folo_core.hookspecs import hookimpl

from folo_attention_example.attention import ChunkedOnlineSoftmaxBackend


@hookimpl
def register_attention_backends(register):
    # Below the built-in paged backend (50): installing the plugin must not change what `auto` picks.
    register(ChunkedOnlineSoftmaxBackend.name, ChunkedOnlineSoftmaxBackend, priority=10)
