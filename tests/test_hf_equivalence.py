"""Greedy outputs and prefill logits match HF transformers on tiny random models."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from helpers import hf_greedy, random_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
LOGPROB_ATOL = 1e-4  # float32 log-softmax, same math in a different order


@pytest.mark.parametrize("backend", ["naive", "paged"])
def test_greedy_matches_hf(tiny_model, backend):
    prompts = random_prompts(9, 512, seed=3, min_len=1, max_len=70)
    expected = hf_greedy(tiny_model, prompts, GREEDY.max_tokens)
    llm = LLM(str(tiny_model), skip_tokenizer_init=True, dtype="float32", attention_backend=backend)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == prompts  # input order kept
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)


def test_prefill_logprobs_match_hf(tiny_model):
    """Every position of a prefill: the full log-softmax equals HF's within LOGPROB_ATOL."""
    from helpers import hf_logits

    prompt = random_prompts(1, 512, seed=5, min_len=24, max_len=24)[0]
    reference = hf_logits(tiny_model, prompt).log_softmax(-1)
    llm = LLM(str(tiny_model), skip_tokenizer_init=True, dtype="float32", max_logprobs=-1)
    prefixes = [{"prompt_token_ids": prompt[:k]} for k in range(1, len(prompt) + 1)]
    outputs = llm.generate(prefixes, SamplingParams(temperature=0, max_tokens=1, logprobs=512), use_tqdm=False)
    for k, output in enumerate(outputs):
        entry = output.outputs[0].logprobs[0]
        ours = torch.full((512,), float("nan"))
        for token_id, lp in entry.items():
            ours[token_id] = lp.logprob
        torch.testing.assert_close(ours, reference[k], atol=LOGPROB_ATOL, rtol=0)


def test_both_config_forms_load_identically(tiny_model_dir, tmp_path):
    """transformers 4.x (rope_theta, torch_dtype) and 5.x (rope_parameters, dtype) config forms."""
    import json
    import shutil

    src = tiny_model_dir("llama")
    old = tmp_path / "old-form"
    shutil.copytree(src, old)
    config = json.loads((old / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["torch_dtype"] = config.pop("dtype", "float32")
    (old / "config.json").write_text(json.dumps(config))
    prompts = random_prompts(3, 512, seed=7)
    new_out = LLM(str(src), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    old_out = LLM(str(old), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in new_out] == [o.outputs[0].token_ids for o in old_out]


def test_sharded_checkpoint(tiny_model_dir, tmp_path):
    """A checkpoint split into several safetensors shards with an index loads the same."""
    from transformers import AutoModelForCausalLM

    src = tiny_model_dir("qwen2")
    AutoModelForCausalLM.from_pretrained(str(src)).save_pretrained(str(tmp_path), max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    prompts = random_prompts(3, 512, seed=8)
    expected = hf_greedy(src, prompts, GREEDY.max_tokens)
    outputs = LLM(str(tmp_path), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
