"""Granite (Llama plus four multipliers) in the one decoder, against HF transformers."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from helpers import hf_greedy, hf_logits, random_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("options", [
    dict(attention_backend="naive", enable_prefix_caching=False),
    dict(attention_backend="paged", max_num_batched_tokens=32, enable_prefix_caching=True),  # chunked prefill
])
def test_granite_greedy_matches_hf(tiny_model_dir, options):
    path = tiny_model_dir("granite")
    prompts = random_prompts(8, 512, seed=13, min_len=1, max_len=70)
    prompts[1] = prompts[0][:40] + prompts[1][:10]  # a shared prefix for the prefix cache
    expected = hf_greedy(path, prompts, GREEDY.max_tokens)
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", **options)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_granite_prefill_logprobs_match_hf(tiny_model_dir):
    path = tiny_model_dir("granite")
    prompt = random_prompts(1, 512, seed=17, min_len=24, max_len=24)[0]
    reference = hf_logits(path, prompt).log_softmax(-1)
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", max_logprobs=-1)
    outputs = llm.generate([{"prompt_token_ids": prompt[:k]} for k in range(1, len(prompt) + 1)],
                           SamplingParams(temperature=0, max_tokens=1, logprobs=512), use_tqdm=False)
    for k, output in enumerate(outputs):
        ours = torch.full((512,), float("nan"))
        for token_id, lp in output.outputs[0].logprobs[0].items():
            ours[token_id] = lp.logprob
        torch.testing.assert_close(ours, reference[k], atol=1e-4, rtol=0)
