"""Bad input gets a clear error that names the problem, never a hang, and the engine keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from folo_core import LLM, SamplingParams
from folo_core.config import ConfigError
from folo_core.engine.errors import EngineStepError
from folo_core.models import CheckpointError
from folo_core.registry import PluginSelectionError
from helpers import random_prompts


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), skip_tokenizer_init=True, max_model_len=64, num_gpu_blocks_override=8,
               block_size=4)


def ok_prompt():
    return {"prompt_token_ids": random_prompts(1, 512, seed=0, max_len=10)[0]}


def still_serves(llm):
    out = llm.generate(ok_prompt(), SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize("prompts, match", [
    ([], "at least one prompt"),
    ({"prompt_token_ids": []}, "cannot be empty"),
    ({"prompt_token_ids": [1] * 65}, r"length 65\) is longer than the maximum model length of 64"),
    ({"prompt_token_ids": [1, 99999]}, "out of vocabulary"),
    ({"prompt_token_ids": "1 2 3"}, "list of integers"),
    ("text prompt", "need a tokenizer"),
    (42, "unsupported prompt"),
])
def test_bad_prompts(llm, prompts, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
    still_serves(llm)


def test_prompt_that_never_fits_the_kv_cache_fails_alone(llm):
    """8 blocks of 4 tokens hold 32 tokens; a 40-token prompt is fine for max_model_len but not the cache."""
    good = ok_prompt()
    with pytest.raises(ValueError, match=r"can never fit in the KV cache, which holds 32 tokens"):
        llm.generate([good, {"prompt_token_ids": [3] * 40}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()  # the good one was withdrawn too (all or nothing)
    still_serves(llm)


def test_requests_are_capped_at_cache_capacity(llm):
    """A request that would outgrow the whole cache finishes with "length" instead of hanging."""
    out = llm.generate({"prompt_token_ids": [5] * 20}, SamplingParams(max_tokens=100, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 32 - 20


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), "max_tokens must be at least 1"),
    (dict(temperature=-1), "temperature must be non-negative"),
    (dict(top_p=0), r"top_p must be in \(0, 1\]"),
    (dict(min_p=2), r"min_p must be in \[0, 1\]"),
    (dict(presence_penalty=3), r"presence_penalty must be in \[-2, 2\]"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens must be less than or equal to max_tokens"),
])
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_mismatched_sampling_params_list(llm):
    with pytest.raises(ValueError, match="got 2 sampling_params for 1 prompts"):
        llm.generate([ok_prompt()], [SamplingParams(), SamplingParams()], use_tqdm=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dtype="float64"), ConfigError, r"dtype: Input should be 'auto', 'float32'"),
    (dict(block_size=0), ConfigError, "block_size: Input should be greater than 0"),
    (dict(max_model_len=-5), ConfigError, "max_model_len"),
    (dict(no_such_option=1), ConfigError, r"unknown engine option\(s\) 'no_such_option'"),
    (dict(attention_backend="nope"), PluginSelectionError, "unknown attention_backend 'nope'; known:"),
    (dict(scheduler="nope"), PluginSelectionError, "unknown scheduler 'nope'; known:"),
    (dict(max_num_batched_tokens=8, max_num_seqs=16), ConfigError,
     r"max_num_batched_tokens \(8\) must be >= max_num_seqs \(16\)"),
    (dict(enable_chunked_prefill=False, max_num_batched_tokens=100), ConfigError,
     "without chunked prefill the longest prompt must fit"),
    (dict(max_model_len=100000), ConfigError, "larger than the model's max_position_embeddings=512"),
])
def test_bad_engine_options(model_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        LLM(str(model_dir), skip_tokenizer_init=True, **kwargs)


def test_missing_model_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LLM(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="has no config.json"):
        LLM(str(tmp_path))


def broken_copy(model_dir, tmp_path, edit) -> str:
    target = tmp_path / "broken"
    shutil.copytree(model_dir, target)
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return str(target)


def test_checkpoint_missing_tensor_is_named(model_dir, tmp_path):
    path = broken_copy(model_dir, tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model.layers.1.self_attn.k_proj.weight"):
        LLM(path, skip_tokenizer_init=True)


def test_checkpoint_misshaped_tensor_is_named(model_dir, tmp_path):
    def shrink(tensors):
        tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1]

    path = broken_copy(model_dir, tmp_path, shrink)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight': shape \(191, 96\)"):
        LLM(path, skip_tokenizer_init=True)


def test_checkpoint_unknown_architecture(model_dir, tmp_path):
    target = tmp_path / "gpt"
    shutil.copytree(model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(PluginSelectionError, match="unknown model 'GPT2LMHeadModel'; known: Gemma2ForCausalLM, Gemma3ForCausalLM, GraniteForCausalLM, LlamaForCausalLM"):
        LLM(str(target), skip_tokenizer_init=True)


def test_failing_step_fails_its_requests_and_engine_keeps_serving(llm, monkeypatch):
    runner = llm.llm_engine.engine_core.executor.model_runner
    original = runner.execute_model
    calls = {"n": 0}

    def flaky(scheduler_output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated kernel failure")
        return original(scheduler_output)

    monkeypatch.setattr(runner, "execute_model", flaky)
    with pytest.raises(EngineStepError, match="2 of 2 request.*simulated kernel failure") as info:
        llm.generate([ok_prompt(), ok_prompt()], SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].finish_reason for o in info.value.outputs] == ["error", "error"]
    assert "RuntimeError: simulated kernel failure" in info.value.outputs[0].outputs[0].error
    assert not llm.llm_engine.has_unfinished_requests()
    assert llm.llm_engine.get_stats().kv_cache_usage == 0.0
    still_serves(llm)
