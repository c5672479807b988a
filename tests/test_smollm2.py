"""The real SmolLM2-135M-Instruct (the embedded default model) against HF transformers."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def llm_fp32(smollm2_path):
    return LLM(smollm2_path, dtype="float32")


def test_greedy_matches_hf_32_tokens(llm_fp32, smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outputs = llm_fp32.generate(PROMPTS, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        assert output.prompt_token_ids == ids[0].tolist()
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                 eos_token_id=None, pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
        assert output.outputs[0].token_ids == ref, prompt
        assert output.outputs[0].text == tokenizer.decode(ref, skip_special_tokens=True)


def test_default_model_answers_paris():
    """``LLM()`` with no model runs the embedded SmolLM2 (a bfloat16 checkpoint) in bfloat16 where
    the CPU computes it natively, else in float32."""
    from folo_core.platform import cpu_native_half_dtypes

    llm = LLM(max_model_len=512)
    expected = "bfloat16" if torch.bfloat16 in cpu_native_half_dtypes() else "float32"
    assert llm.llm_engine.config.model.dtype == expected
    output = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0]
    assert "Paris" in output.outputs[0].text
    assert output.outputs[0].finish_reason == "stop"  # ended by <|im_end|>, not the length limit
