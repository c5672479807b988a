"""Tiny Qwen2/Qwen3 GPTQ checkpoints from gptqmodel: Folo matches transformers + optimum + gptqmodel.

The exact comparison runs in float32 against gptqmodel's ``gptq_torch`` kernel:
both sides dequantize ``W`` in fp16 (the scales' dtype) and do one float32
matmul, so what differs is summation order and the attention implementation,
and log-probabilities agree to ``LOGPROB_ATOL``. Folo's float32 path is the
reference kernel (``dequant``). The fast path (bfloat16 activations, the CPU
int4 kernel) cannot match to that precision: bfloat16 keeps 8 significant bits,
so it is held to ``BF16_LOGPROB_ATOL`` against the same float32 reference.
"""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from gptq_helpers import GPTQ_CHECKPOINTS, VOCAB, hf_gptq_model
from helpers import random_prompts

LOGPROB_ATOL = 1e-4
BF16_LOGPROB_ATOL = 0.25  # measured worst 0.08 on these checkpoints
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)

CHECKPOINTS = list(GPTQ_CHECKPOINTS)


def prefix_logprobs(llm: LLM, prompt: list[int]) -> torch.Tensor:
    """[len(prompt), VOCAB] log-softmax after every prefix of ``prompt``."""
    prefixes = [{"prompt_token_ids": prompt[:k]} for k in range(1, len(prompt) + 1)]
    outputs = llm.generate(prefixes, SamplingParams(temperature=0, max_tokens=1, logprobs=VOCAB), use_tqdm=False)
    rows = torch.full((len(prompt), VOCAB), float("nan"))
    for k, output in enumerate(outputs):
        for token_id, logprob in output.outputs[0].logprobs[0].items():
            rows[k, token_id] = logprob.logprob
    return rows


def kernels_used(llm: LLM) -> set[str]:
    runner = llm.llm_engine.engine_core.executor.model_runner
    return {m.quant_method.kernel_name for m in runner.model.modules() if hasattr(m, "kernel")}


@pytest.fixture(scope="module")
def hf_reference(gptq_checkpoint):
    """name -> (prompt, transformers' float32 log-softmax over it), computed once per checkpoint."""
    cache = {}

    def get(name: str):
        if name not in cache:
            prompt = random_prompts(1, VOCAB, seed=5, min_len=24, max_len=24)[0]
            with torch.inference_mode():
                logits = hf_gptq_model(gptq_checkpoint(name))(torch.tensor([prompt])).logits[0]
            cache[name] = prompt, logits.float().log_softmax(-1)
        return cache[name]

    return get


# (checkpoint, activations, the kernel every layer must get, log-prob tolerance vs float32 transformers)
LOGPROB_CASES = [(name, "float32", "dequant", LOGPROB_ATOL) for name in CHECKPOINTS] + [
    (name, "bfloat16", "cpu_int4pack", BF16_LOGPROB_ATOL) for name in CHECKPOINTS
    if GPTQ_CHECKPOINTS[name][1].bits == 4] + [
    # No int8 CPU kernel takes GPTQ groups: 8-bit layers dequantize per call in bf16 too.
    ("qwen3-8bit-g64-asym", "bfloat16", "dequant", BF16_LOGPROB_ATOL)]


@pytest.mark.parametrize("name, dtype, kernel, atol", LOGPROB_CASES)
def test_logprobs_match_transformers(name, dtype, kernel, atol, gptq_checkpoint, hf_reference):
    prompt, reference = hf_reference(name)
    llm = LLM(str(gptq_checkpoint(name)), dtype=dtype, skip_tokenizer_init=True, max_logprobs=-1)
    assert kernels_used(llm) == {kernel}
    torch.testing.assert_close(prefix_logprobs(llm, prompt), reference, atol=atol, rtol=0)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_float32_greedy_matches_transformers(name, gptq_checkpoint):
    path = gptq_checkpoint(name)
    prompts = random_prompts(4, VOCAB, seed=11, min_len=3, max_len=30)
    model = hf_gptq_model(path)
    expected = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=GREEDY.max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            expected.append(out[0, len(ids):].tolist())
    llm = LLM(str(path), dtype="float32", skip_tokenizer_init=True, max_logprobs=-1)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_quantized_linears_take_under_a_third_of_bfloat16(gptq_checkpoint):
    """Group 64: 4-bit codes plus a bf16 (scale, offset) pair per 64 inputs = 4.5 bits per weight."""
    llm = LLM(str(gptq_checkpoint("qwen3-g64-sym")), dtype="bfloat16", skip_tokenizer_init=True)
    memory = llm.llm_engine.get_stats().weight_memory
    spec = llm.llm_engine.engine_core.executor.model_runner.model.spec
    per_layer = spec.hidden_size * (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim \
        + spec.num_heads * spec.head_dim * spec.hidden_size + 3 * spec.hidden_size * spec.intermediate_size
    assert memory.quantized_dense_bytes == 2 * spec.num_layers * per_layer
    assert memory.quantized_bytes == pytest.approx(memory.quantized_dense_bytes * 4.5 / 16, rel=0.01)
    assert memory.quantized_ratio < 0.3


def test_quantize_config_json_alone_selects_gptq(gptq_checkpoint, tmp_path):
    """Older AutoGPTQ checkpoints keep the settings only in quantize_config.json."""
    import json
    import shutil

    src = gptq_checkpoint("qwen3-g64-sym")
    shutil.copytree(src, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(3, VOCAB, seed=2)]
    expected = LLM(str(src), skip_tokenizer_init=True).generate(prompts, GREEDY, use_tqdm=False)
    llm = LLM(str(tmp_path / "ckpt"), skip_tokenizer_init=True)
    assert llm.llm_engine.engine_core.selected.quantization == "gptq"
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in expected]


def test_desc_act_fused_shards_share_g_idx(gptq_checkpoint):
    """gptqmodel writes one act-order g_idx for q/k/v and for gate/up (one input, one Hessian),
    non-trivial, which is what lets the fused layers hold a single g_idx."""
    from safetensors.torch import load_file

    tensors = load_file(str(gptq_checkpoint("qwen3-g32-act-asym") / "model.safetensors"))
    for layer in range(2):
        p = f"model.layers.{layer}."
        q, k, v = (tensors[f"{p}self_attn.{x}_proj.g_idx"] for x in "qkv")
        gate, up = (tensors[f"{p}mlp.{x}_proj.g_idx"] for x in ("gate", "up"))
        assert torch.equal(q, k) and torch.equal(q, v) and torch.equal(gate, up)
        assert bool((q[1:] < q[:-1]).any())  # act-order: not sorted


def test_dynamic_exclusion_loads_that_module_unquantized(gptq_checkpoint, tmp_path):
    """A module a `-:` rule excludes is read as a plain weight; here its dequantized GPTQ weight,
    so the model computes exactly what the fully quantized one does."""
    from folo_plugins.gptq.packing import decode_zeros, dequantize
    from gptq_helpers import copy_checkpoint, edit_quantization_config, edit_tensors

    src = gptq_checkpoint("qwen3-g32-act-asym")
    mixed = copy_checkpoint(src, tmp_path / "mixed")
    prefix = "model.layers.1.mlp.down_proj"

    def dense_down_proj(tensors):
        qweight, qzeros, scales, g_idx = (tensors.pop(f"{prefix}.{n}") for n in ("qweight", "qzeros", "scales", "g_idx"))
        weight = dequantize(qweight, decode_zeros(qzeros, 4, "gptq"), scales, g_idx, 4)
        tensors[f"{prefix}.weight"] = weight.float().T.contiguous()

    edit_tensors(mixed, dense_down_proj)
    edit_quantization_config(mixed, dynamic={r"-:model\.layers\.1\.mlp\.down_proj": {}})
    prompt = random_prompts(1, VOCAB, seed=9, min_len=12, max_len=12)[0]
    llm = LLM(str(mixed), dtype="float32", skip_tokenizer_init=True, max_logprobs=-1)
    model = llm.llm_engine.engine_core.executor.model_runner.model
    assert not hasattr(model.model.layers[1].mlp.down_proj, "kernel")
    assert hasattr(model.model.layers[0].mlp.down_proj, "kernel")
    expected = prefix_logprobs(LLM(str(src), dtype="float32", skip_tokenizer_init=True,
                                        max_logprobs=-1), prompt)
    torch.testing.assert_close(prefix_logprobs(llm, prompt), expected, atol=LOGPROB_ATOL, rtol=0)
