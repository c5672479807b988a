"""Plugin ``flash_attn``: the flash-attn 2 backend for CUDA (sm80+, fp16/bf16).

Registered everywhere; where CUDA or the ``flash_attn`` package is missing it is
not eligible, and ``folo plugins --explain`` says which.
"""

from folo_core.hookspecs import hookimpl
from folo_plugins.flash_attn.attention import FlashAttentionBackend


@hookimpl
def register_attention_backends(register):
    register(FlashAttentionBackend.name, FlashAttentionBackend, priority=100)
