"""``folo quantize`` options and errors, calibration text, and ``folo plugins --explain`` for GPTQ."""

from __future__ import annotations

import json

import pytest

from folo_core import LLM
from folo_core.entrypoints.cli import main
from folo_plugins.gptq.calibration import BUILTIN_SAMPLE, calibration_samples, split_samples
from gptq_helpers import build_tiny_source


def test_calibration_text_paragraphs_or_lines(tmp_path):
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("First sample,\nstill the first.\n\n\nSecond sample.\n\nThird.\n")
    assert calibration_samples(str(paragraphs), 2) == ["First sample,\nstill the first.", "Second sample."]
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\nthree\n")
    assert calibration_samples(str(lines), 10) == ["one", "two", "three"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        calibration_samples(str(tmp_path / "missing.txt"), 10)
    builtin = calibration_samples(None, 100)
    assert len(builtin) == 12 and sum(len(s.split()) for s in builtin) > 400
    assert len(split_samples(BUILTIN_SAMPLE)) == 12


def test_folo_quantize_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTQMODEL_DISABLE_PACK_EXT", "1")
    source = build_tiny_source("qwen3", tmp_path / "src")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(split_samples(BUILTIN_SAMPLE)))  # one sample per line
    out = tmp_path / "out"
    assert main(["quantize", str(source), str(out), "--group-size", "64", "--desc-act", "--no-sym",
                 "--calibration", str(calibration), "--num-samples", "4"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out}"  # gptqmodel prints above it
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (config["bits"], config["group_size"], config["desc_act"], config["sym"], config["checkpoint_format"]) \
        == (4, 64, True, False, "gptq")
    assert LLM(str(out), skip_tokenizer_init=True).llm_engine.engine_core.selected.quantization == "gptq"


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "bits=3 is not supported (supported: 4, 8)"),
    (["--group-size", "0"], "group_size=0 must be -1 (a single group) or positive"),
    (["--method", "awq"], "unknown quantizer 'awq'; known: gptq"),
])
def test_folo_quantize_refuses_bad_options(args, message, tmp_path, capsys):
    source = build_tiny_source("qwen3", tmp_path / "src")
    assert main(["quantize", str(source), str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err


def test_folo_quantize_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["quantize", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, kernel", [("bfloat16", "cpu_int4pack"), ("float32", "dequant")])
def test_plugins_explain_shows_the_quantizer_and_kernel(dtype, kernel, gptq_checkpoint, capsys):
    path = gptq_checkpoint("qwen3-g64-sym")
    capsys.readouterr()  # whatever gptqmodel printed while quantizing
    assert main(["plugins", "--explain", "--model", str(path), "--dtype", dtype, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["explain"]
    assert [r["name"] for r in report["quantizer"] if r["selected"]] == ["gptq"]
    rows = {r["name"]: r for r in report["quantization_kernel"]}
    assert [name for name, r in rows.items() if r["selected"]] == [kernel]
    assert rows["gptqmodel"]["why"].startswith("not eligible: needs a CUDA device")
    assert main(["plugins", "--explain", "--model", str(path), "--dtype", dtype]) == 0
    assert f"-> {kernel} (priority" in capsys.readouterr().out
