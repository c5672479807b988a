"""The plugin's own tests: Folo's conformance kit, and greedy generation against HF transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from folo_attention_example.attention import ChunkedOnlineSoftmaxBackend
from folo_core import LLM, SamplingParams
from folo_core.plugins import get_plugin_manager
from folo_core.testing import AttentionBackendConformance


class TestConformance(AttentionBackendConformance):
    backend = ChunkedOnlineSoftmaxBackend


def test_registered_through_the_folo_entry_point():
    entry = get_plugin_manager().registry("attention_backend").get("chunked_online_softmax")
    assert entry.impl is ChunkedOnlineSoftmaxBackend
    assert get_plugin_manager().plugins[entry.plugin].distribution == "folo-attention-example"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random two-layer Llama with grouped-query attention, saved as an HF checkpoint."""
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, initializer_range=0.1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_generation_matches_hf_greedy(tiny_llama):
    prompts = [[1, 5, 9, 200, 17], list(range(3, 40)), [7]]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = [hf.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(p):].tolist() for p in prompts]

    llm = LLM(str(tiny_llama), attention_backend="chunked_online_softmax", dtype="float32",
              skip_tokenizer_init=True, block_size=8, num_gpu_blocks_override=64,
              max_num_batched_tokens=16)  # long prompts arrive in chunks
    assert llm.llm_engine.engine_core.selected.attention_backend == "chunked_online_softmax"
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
