"""Plugin ``models``: registers the decoder for every architecture it covers."""

from __future__ import annotations

import functools

from folo_core.hookspecs import hookimpl
from folo_models.decoder import load_decoder

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
                 "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GraniteForCausalLM", "Olmo2ForCausalLM",
                 "Gemma2ForCausalLM", "Gemma3ForCausalLM")


@hookimpl
def register_models(register):
    for arch in ARCHITECTURES:
        register(arch, functools.partial(load_decoder, arch))
