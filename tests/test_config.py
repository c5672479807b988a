"""Engine options: keywords, TOML/YAML files and CLI flags all reach the same config."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from folo_core.config import ConfigError, EngineConfig


def test_flat_keywords_land_in_their_sections():
    config = EngineConfig.from_kwargs(model="/m", dtype="bfloat16", block_size=32, max_num_seqs=4,
                                      enable_chunked_prefill=False, attention_backend="naive")
    assert (config.model.model, config.model.dtype, config.model.attention_backend) == ("/m", "bfloat16", "naive")
    assert config.cache.block_size == 32
    assert (config.scheduler.max_num_seqs, config.scheduler.enable_chunked_prefill) == (4, False)


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'dtype = "float32"\n[cache]\nblock_size = 8\n[scheduler]\nmax_num_seqs = 3\n'),
    (".yaml", "dtype: float32\ncache:\n  block_size: 8\nscheduler:\n  max_num_seqs: 3\n"),
])
def test_config_files(tmp_path, suffix, text):
    path = tmp_path / f"engine{suffix}"
    path.write_text(text)
    config = EngineConfig.from_file(path, max_num_seqs=5)  # keywords override the file
    assert (config.model.dtype, config.cache.block_size, config.scheduler.max_num_seqs) == ("float32", 8, 5)


def test_bad_file_values_name_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("block_size = -1\n")
    with pytest.raises(ConfigError, match="block_size"):
        EngineConfig.from_file(path)


def test_cli_flags_both_spellings_and_config_file(tmp_path):
    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    path = tmp_path / "c.toml"
    path.write_text("block_size = 64\nmax_num_seqs = 7\n")
    args = parser.parse_args(["--max-model-len", "128", "--max_num_batched_tokens", "256",
                              "--no-enable-chunked-prefill", "--config", str(path), "--max-num-seqs", "9"])
    config = EngineConfig.from_cli_args(args)
    assert config.model.max_model_len == 128
    assert config.scheduler.max_num_batched_tokens == 256
    assert config.scheduler.enable_chunked_prefill is False
    assert config.cache.block_size == 64 and config.scheduler.max_num_seqs == 9  # flag beats file


def test_folo_generate_with_a_local_checkpoint(tiny_model_dir, qwen3_tokenizer_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen3", vocab_size=151936), model)
    for f in qwen3_tokenizer_dir.iterdir():
        shutil.copy(f, model / f.name)
    result = subprocess.run(
        [sys.executable, "-m", "folo_core.entrypoints.cli", "generate", "Hello", "--model", str(model),
         "--max-tokens", "5", "--max-model-len", "64"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # random model, but some text came out


def test_folo_generate_reports_user_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "folo_core.entrypoints.cli", "generate", "hi", "--model",
                             str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "folo: error: model path" in result.stderr and "does not exist" in result.stderr


def test_common_vllm_keywords_are_accepted(tiny_model_dir):
    from folo_core import LLM, SamplingParams

    llm = LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, enforce_eager=True, trust_remote_code=True,
              gpu_memory_utilization=0.5, tensor_parallel_size=1)
    assert llm.llm_engine.engine_core.executor.model_runner.attn_metadata_builder.enforce_eager
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2
