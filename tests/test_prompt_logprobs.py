"""prompt_logprobs match HF at every prompt position, with chunked prefill, prefix caching and preemption."""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from helpers import hf_logits, random_prompts

VOCAB = 512
SETTINGS = {
    "one step": dict(),
    "chunked + prefix caching": dict(enable_prefix_caching=True, max_num_batched_tokens=16,
                                     long_prefill_token_threshold=7, block_size=4),
    "preemption": dict(num_gpu_blocks_override=14, block_size=4),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_prompt_logprobs_match_hf(tiny_model, setting):
    llm = LLM(str(tiny_model), skip_tokenizer_init=True, dtype="float32", **SETTINGS[setting])
    prompts = random_prompts(4, VOCAB, seed=3, min_len=20, max_len=36)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=3)
    for _ in range(2):  # the second pass would hit the prefix cache, which prompt_logprobs skips
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        for prompt, output in zip(prompts, outputs):
            reference = hf_logits(tiny_model, prompt).log_softmax(-1)
            logprobs = output.prompt_logprobs
            assert logprobs[0] is None and len(logprobs) == len(prompt)
            for i in range(1, len(prompt)):
                position = logprobs[i]
                assert abs(position[prompt[i]].logprob - reference[i - 1, prompt[i]].item()) < 1e-4
                top = reference[i - 1].topk(3).indices.tolist()
                assert set(top) <= set(position)
            assert output.num_cached_tokens == 0
    if setting == "preemption":
        assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0


def test_prompt_logprobs_above_the_limit_are_refused(tiny_model):
    llm = LLM(str(tiny_model), skip_tokenizer_init=True, max_model_len=32)
    with pytest.raises(ValueError, match="Requested prompt logprobs of 21, which is greater than max allowed: 20"):
        llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(prompt_logprobs=21), use_tqdm=False)


def test_n_choices_share_one_prompt_logprobs(tiny_model):
    llm = LLM(str(tiny_model), skip_tokenizer_init=True, dtype="float32")
    out = llm.generate({"prompt_token_ids": list(range(5, 25))},
                       SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=4, prompt_logprobs=0), use_tqdm=False)[0]
    assert len(out.outputs) == 3 and len(out.prompt_logprobs) == 20 and out.prompt_logprobs[0] is None
