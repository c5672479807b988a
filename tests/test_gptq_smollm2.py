"""The real SmolLM2-135M-Instruct quantized by ``folo quantize`` (its default model, its defaults)."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from folo_core.entrypoints.cli import main

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_gptq(tmp_path_factory, smollm2_path, monkeypatch_module):
    """``folo quantize OUTPUT``: 4-bit, group 128, the built-in calibration sample."""
    monkeypatch_module.setenv("GPTQMODEL_DISABLE_PACK_EXT", "1")  # no 30 s C++ build; packing is not the cost
    out = tmp_path_factory.mktemp("smollm2-gptq")
    assert main(["quantize", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def llm(smollm2_gptq):
    # bfloat16 whatever the CPU: the int4 kernel takes bf16 activations only, and an AVX2-only CPU's
    # dtype="auto" (float32) would put every layer on the dequant reference kernel instead.
    return LLM(str(smollm2_gptq), dtype="bfloat16")


def test_answers_the_capital_of_france(llm):
    answer = llm.generate([llm.render_chat(QUESTION)], SamplingParams(temperature=0, max_tokens=24),
                          use_tqdm=False)[0].outputs[0].text
    assert "Paris" in answer


def test_runs_on_the_int4_kernel_in_well_under_a_third_of_the_memory(llm):
    memory = llm.llm_engine.get_stats().weight_memory
    model = llm.llm_engine.engine_core.executor.model_runner.model
    assert {m.quant_method.describe() for m in model.modules() if hasattr(m, "kernel")} == {"gptq 4-bit (cpu_int4pack)"}
    # 4-bit codes + a bf16 (scale, offset) pair per kernel group: 128 where K=1536 (down_proj), 64 where
    # K=576 (its last group of 128 is short, so groups are split in two): 4.25 and 4.5 bits per weight.
    spec = model.spec
    hidden, inter = spec.hidden_size, spec.intermediate_size
    k576 = hidden * ((spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim + hidden + 2 * inter)
    assert memory.quantized_bytes == spec.num_layers * (k576 * 4.5 + inter * hidden * 4.25) / 8
    assert memory.quantized_ratio < 0.3


def test_transformers_loads_it_and_agrees_on_the_first_token(llm, smollm2_gptq):
    from gptq_helpers import hf_gptq_model

    prompt = llm.render_chat(QUESTION)
    ids = torch.tensor([prompt["prompt_token_ids"]])
    with torch.inference_mode():
        logits = hf_gptq_model(smollm2_gptq, torch.bfloat16)(ids).logits[0, -1]
    first = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)[0].outputs[0]
    assert first.token_ids == [int(logits.argmax())]
