"""Tensor parallelism on the mp executor: 2 gloo ranks must match one process (the ray executor:
``test_ray.py``)."""

from __future__ import annotations

import pytest

from folo_core import LLM, SamplingParams
from helpers import random_prompts


def assert_same_tokens_and_logprobs(one: list, two: list) -> None:
    """Identical greedy tokens; float32 log-probs within 1e-4 (the all-reduce sums the same
    products in another order)."""
    for a, b in zip(one, two, strict=True):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        for pa, pb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert pa.keys() == pb.keys()
            for t in pa:
                assert abs(pa[t].logprob - pb[t].logprob) < 1e-4


# qwen3: 1 KV head, replicated; phi3: fused tensors; MoE: experts split by intermediate size;
# gemma2: soft-capped attention over each rank's heads
@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama", "phi3", "qwen2_moe", "qwen3_moe", "gemma2"])
def test_tp2_matches_one_rank_token_for_token_and_in_logprobs(tiny_model_dir, kind):
    path = str(tiny_model_dir(kind))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(6, 512, seed=21, min_len=3, max_len=60)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    one = LLM(path, skip_tokenizer_init=True, dtype="float32").generate(prompts, params, use_tqdm=False)
    tp = LLM(path, skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2)
    assert tp.llm_engine.engine_core.selected.executor == "mp"
    assert_same_tokens_and_logprobs(one, tp.generate(prompts, params, use_tqdm=False))
    tp.llm_engine.shutdown()


def test_shapes_the_ranks_cannot_split_are_refused(tiny_model_dir):
    path = str(tiny_model_dir("llama"))  # 6 heads, 2 KV heads
    with pytest.raises(Exception, match="tensor_parallel_size=4 does not divide num_attention_heads"):
        LLM(path, skip_tokenizer_init=True, tensor_parallel_size=4)


@pytest.mark.parametrize("name", ["qwen2-gall-asym", "qwen3-g32-act-asym"])  # one group; act-order
def test_tp2_gptq_matches_one_rank(gptq_checkpoint, name):
    """GPTQ layers shard by vLLM's rule: scales and zeros split with the input rows only when
    groups follow the rows; with one group or act-order every rank keeps them all."""
    path = str(gptq_checkpoint(name))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(4, 512, seed=5, min_len=3, max_len=40)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    one = LLM(path, skip_tokenizer_init=True, dtype="float32").generate(prompts, params, use_tqdm=False)
    tp = LLM(path, skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2)
    two = tp.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in two] == [o.outputs[0].token_ids for o in one]
    tp.llm_engine.shutdown()


def test_olmo2_projection_qk_norm_is_refused_under_tp(tiny_model_dir):
    path = str(tiny_model_dir("olmo2"))
    with pytest.raises(Exception, match="QK-norm over the whole projection"):
        LLM(path, skip_tokenizer_init=True, tensor_parallel_size=2)
