"""A checkpoint is data: its ``auto_map`` code never runs, even with "y" waiting on stdin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import {base}
class Evil({base}):
    model_type = "folo_evil"
"""


def _run_folo(model_dir: Path, tokenizer_dir: Path | None = None) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom folo_core import LLM\n"
            f"LLM({str(model_dir)!r}, tokenizer={str(tokenizer_dir or model_dir)!r}, max_model_len=32)\n")
    return subprocess.run([sys.executable, "-c", code], input="y\ny\ny\n", capture_output=True, text=True,
                          timeout=300)


def _plant(directory: Path, filename: str, marker: Path, base: str) -> None:
    (directory / filename).write_text(_EVIL.format(marker=str(marker), base=base))


def test_config_auto_map_never_runs(tmp_path):
    marker = tmp_path / "config-code-ran"
    model = tmp_path / "evil-config"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "folo_evil", "architectures": ["LlamaForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.Evil"}}))
    _plant(model, "configuration_evil.py", marker, "PretrainedConfig")
    result = _run_folo(model)
    assert result.returncode != 0
    assert not marker.exists(), "the checkpoint's configuration code ran"
    assert "cannot read" in result.stderr and "config.json" in result.stderr


def test_tokenizer_auto_map_never_runs(tmp_path, tiny_chat_model_dir):
    marker = tmp_path / "tokenizer-code-ran"
    model = tmp_path / "evil-tokenizer"
    shutil.copytree(tiny_chat_model_dir, model)
    (model / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Evil", "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]}}))
    _plant(model, "tokenization_evil.py", marker, "PreTrainedTokenizer")
    result = _run_folo(model)
    assert not marker.exists(), "the checkpoint's tokenizer code ran"
    # transformers may fall back to the checkpoint's tokenizer.json; if it cannot, the error says so.
    assert result.returncode == 0 or "cannot load a tokenizer" in result.stderr


@pytest.mark.parametrize("hf_call", ["AutoConfig", "AutoTokenizer"])
def test_transformers_would_run_it(tmp_path, hf_call, tiny_chat_model_dir):
    """The planted code is live: transformers itself runs it when trusted (so the tests above can fail)."""
    marker = tmp_path / "ran"
    model = tmp_path / "m"
    if hf_call == "AutoConfig":
        model.mkdir()
        (model / "config.json").write_text(json.dumps({
            "model_type": "folo_evil", "auto_map": {"AutoConfig": "configuration_evil.Evil"}}))
        _plant(model, "configuration_evil.py", marker, "PretrainedConfig")
    else:
        shutil.copytree(tiny_chat_model_dir, model)
        (model / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "Evil", "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]}}))
        _plant(model, "tokenization_evil.py", marker, "PreTrainedTokenizer")
    code = (f"import transformers\ntry:\n    transformers.{hf_call}.from_pretrained({str(model)!r}, "
            "trust_remote_code=True)\nexcept Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert marker.exists()
