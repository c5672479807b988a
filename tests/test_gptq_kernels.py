"""GPTQ kernels: the CPU int4 kernel and gptqmodel's equal the dequantize reference; the choice per layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from folo_core.registry import SelectionContext
from folo_core.utils import cdiv
from folo_plugins.gptq.config import GPTQConfig
from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels import FORCE_ENV, choose_kernel, kernel_candidates
from folo_plugins.gptq.kernels.base import GPTQWeights
from folo_plugins.gptq.kernels.cpu_int4pack import CPUInt4PackKernel
from folo_plugins.gptq.kernels.dequant import DequantKernel
from folo_plugins.gptq.kernels.gptqmodel_kernels import GPTQModelKernel
from folo_plugins.gptq.packing import decode_zeros, pack_rows


def scheme(bits: int = 4, group_size: int = 128, desc_act: bool = False) -> GPTQScheme:
    return GPTQScheme(bits=bits, group_size=group_size, desc_act=desc_act, sym=False, checkpoint_format="gptq")


def random_layer(input_size: int, output_size: int, group_size: int, act_order: bool = False, bits: int = 4,
                 seed: int = 0) -> GPTQWeights:
    """Random codes, zero points and scales; with act_order the rows' groups are shuffled as desc_act does."""
    gen = torch.Generator().manual_seed(seed)
    group = input_size if group_size == -1 else group_size
    groups = cdiv(input_size, group)
    codes = torch.randint(0, 2**bits, (input_size, output_size), generator=gen, dtype=torch.int32)
    g_idx = torch.arange(input_size) // group
    if act_order:
        g_idx = g_idx[torch.randperm(input_size, generator=gen)]
    return GPTQWeights(qweight=pack_rows(codes, bits),
                       zeros=torch.randint(0, 2**bits, (groups, output_size), generator=gen, dtype=torch.int32),
                       scales=(torch.rand(groups, output_size, generator=gen) * 0.02 + 1e-3).half(),
                       g_idx=g_idx.int(), bits=bits)


def assert_matches_reference(kernel, weights: GPTQWeights, sch: GPTQScheme, rows: int = 5) -> None:
    """bf16 kernel output vs the float32 reference: a wrong layout errs by the output's own size."""
    x = torch.randn(rows, weights.input_size, generator=torch.Generator().manual_seed(1)).bfloat16()
    bias = torch.randn(weights.output_size).bfloat16()
    reference = DequantKernel(weights, sch, torch.float32)(x.float(), bias.float())
    out = kernel(x, bias)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=1e-2 * float(reference.abs().max()))


@pytest.mark.parametrize("input_size, output_size, group_size, act_order, kernel_group, pad", [
    (256, 64, 32, False, 32, 0),
    (256, 64, 64, True, 64, 0),
    (512, 48, 128, False, 128, 0),
    (512, 64, 256, True, 256, 0),
    (1024, 16, 512, False, 256, 0),  # a group size the kernel lacks: split
    (576, 64, -1, False, 64, 0),  # one group of 576 rows: split into 9 x 64
    (576, 32, 128, True, 64, 0),  # short last group (64 rows): split so that no padding is needed
    (136, 32, 64, False, 64, 56),  # short last group of 8 rows: padded to 192
])
def test_int4pack_equals_reference(input_size, output_size, group_size, act_order, kernel_group, pad):
    weights = random_layer(input_size, output_size, group_size, act_order)
    sch = scheme(group_size=group_size, desc_act=act_order)
    assert CPUInt4PackKernel.layer_reasons(weights, sch, torch.bfloat16) == []
    kernel = CPUInt4PackKernel(weights, sch, torch.bfloat16)
    assert (kernel.group_size, kernel.pad, kernel.perm is not None) == (kernel_group, pad, act_order)
    assert_matches_reference(kernel, weights, sch)
    assert_matches_reference(kernel, weights, sch, rows=1)  # decode


@pytest.mark.parametrize("name", ["qwen3-g32-act-asym", "qwen2-g128-act-sym-v2", "qwen2-gall-asym"])
def test_int4pack_equals_reference_on_checkpoint_layers(name, gptq_checkpoint):
    """Every quantized layer gptqmodel wrote, through both kernels."""
    path = gptq_checkpoint(name)
    config = GPTQConfig.from_config(json.loads((path / "config.json").read_text())["quantization_config"])
    tensors = load_file(str(path / "model.safetensors"))
    prefixes = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    assert len(prefixes) == 14
    for prefix in prefixes:
        sch = config.scheme
        weights = GPTQWeights(tensors[f"{prefix}.qweight"],
                              decode_zeros(tensors[f"{prefix}.qzeros"], sch.bits, sch.checkpoint_format),
                              tensors[f"{prefix}.scales"], tensors[f"{prefix}.g_idx"], sch.bits)
        assert choose_kernel(weights, sch, torch.bfloat16) is CPUInt4PackKernel
        assert_matches_reference(CPUInt4PackKernel(weights, sch, torch.bfloat16), weights, sch)


@pytest.mark.parametrize("weights, sch, dtype, reason", [
    (random_layer(128, 40, 32), scheme(group_size=32), torch.bfloat16, "output size % 16 == 0 (has 40)"),
    (random_layer(96, 32, 48), scheme(group_size=48), torch.bfloat16, "group size 48 is not a multiple of 32"),
    (random_layer(128, 32, 32), scheme(group_size=32), torch.float32, "needs bfloat16 activations"),
    (random_layer(128, 32, 32, bits=8), scheme(bits=8, group_size=32), torch.bfloat16, "needs bits=4"),
])
def test_layers_int4pack_cannot_take_fall_back_to_the_reference(weights, sch, dtype, reason):
    refusal = CPUInt4PackKernel.config_reasons(sch, torch.device("cpu"), dtype) \
        + CPUInt4PackKernel.layer_reasons(weights, sch, dtype)
    assert any(reason in r for r in refusal), refusal
    assert choose_kernel(weights, sch, dtype) is DequantKernel


def test_uneven_groups_are_refused_by_int4pack():
    weights = random_layer(128, 32, 32)
    weights.g_idx = torch.tensor([0] * 40 + [1] * 24 + [2] * 32 + [3] * 32, dtype=torch.int32)
    assert CPUInt4PackKernel.layer_reasons(weights, scheme(group_size=32), torch.bfloat16) == [
        "groups are not all the same size"]


def test_kernel_candidates_explain_the_choice():
    cpu_bf16 = dict(kernel_candidates(scheme(), SelectionContext(device="cpu", dtype=torch.bfloat16)))
    assert list(cpu_bf16) == ["gptqmodel", "cpu_int4pack", "dequant"]
    assert cpu_bf16["gptqmodel"] == ["needs a CUDA device (Folo's own kernels serve the CPU)"]
    assert cpu_bf16["cpu_int4pack"] == [] and cpu_bf16["dequant"] == []
    cpu_fp32 = dict(kernel_candidates(scheme(), SelectionContext(device="cpu", dtype=torch.float32)))
    assert cpu_fp32["cpu_int4pack"] == [
        "needs bfloat16 activations (torch's torch.float32 int4 CPU kernel is a slow scalar loop)"]


def test_forcing_a_kernel(monkeypatch):
    weights, sch = random_layer(128, 32, 32), scheme(group_size=32)
    monkeypatch.setenv(FORCE_ENV, "dequant")
    assert choose_kernel(weights, sch, torch.bfloat16) is DequantKernel
    monkeypatch.setenv(FORCE_ENV, "cpu_int4pack")
    with pytest.raises(ValueError, match="cpu_int4pack: needs bfloat16"):
        choose_kernel(weights, sch, torch.float32)
    monkeypatch.setenv(FORCE_ENV, "marlin")
    with pytest.raises(ValueError, match="names no GPTQ kernel; known: gptqmodel, cpu_int4pack, dequant"):
        choose_kernel(weights, sch, torch.bfloat16)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptqmodel_adapter_equals_reference_on_cpu(act_order):
    """The CUDA path's plumbing (v2 zero points, buffers, post_init), run through gptqmodel's torch kernel."""
    from gptqmodel.utils.backend import BACKEND

    weights = random_layer(256, 64, 64, act_order)
    sch = scheme(group_size=64, desc_act=act_order)
    assert_matches_reference(GPTQModelKernel(weights, sch, torch.bfloat16, backend=BACKEND.GPTQ_TORCH), weights, sch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="gptqmodel's CUDA kernels need a CUDA device")
def test_gptqmodel_cuda_kernel_matches_cpu_reference(gptq_checkpoint):
    """fp16 on CUDA vs the float32 reference: the top log-probabilities of the next token agree."""
    from folo_core import LLM, SamplingParams
    from helpers import random_prompts

    path = str(gptq_checkpoint("qwen2-g128-act-sym-v2"))
    prompts = [{"prompt_token_ids": p} for p in random_prompts(3, 512, seed=4)]
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=20)
    cuda = LLM(path, device="cuda", dtype="float16", skip_tokenizer_init=True)
    kernels = {m.quant_method.kernel_name for m in cuda.llm_engine.engine_core.executor.model_runner.model.modules()
               if hasattr(m, "kernel")}
    assert kernels == {"gptqmodel"}
    reference = LLM(path, device="cpu", dtype="float32", skip_tokenizer_init=True)
    for ours, ref in zip(cuda.generate(prompts, params, use_tqdm=False),
                         reference.generate(prompts, params, use_tqdm=False)):
        ours_lp, ref_lp = ours.outputs[0].logprobs[0], ref.outputs[0].logprobs[0]
        for token_id in set(ours_lp) & set(ref_lp):
            assert abs(ours_lp[token_id].logprob - ref_lp[token_id].logprob) < 0.1
