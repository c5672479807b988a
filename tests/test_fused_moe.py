"""The fused MoE layer against HF transformers' per-expert loop, and its refusals."""

from __future__ import annotations

import pytest
import torch

from folo_models.layers.fused_moe import fused_experts, fused_experts_op, select_experts


def hf_experts(x, w13, w2, topk_weights, topk_ids):
    """HF transformers' Qwen2-MoE experts (a loop over the experts the batch hit) on these weights."""
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts

    experts = Qwen2MoeExperts(Qwen2MoeConfig(num_experts=w13.shape[0], hidden_size=w13.shape[2],
                                             moe_intermediate_size=w2.shape[2], hidden_act="silu"))
    experts.gate_up_proj.data, experts.down_proj.data = w13, w2
    return experts(x, topk_ids, topk_weights)


@pytest.mark.parametrize("tokens,experts,top_k", [(1, 8, 2), (7, 8, 2), (64, 6, 3), (33, 16, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_experts_match_the_per_expert_loop(tokens, experts, top_k, dtype):
    """Every routing, including experts no token chose (empty groups) and a single token."""
    gen = torch.Generator().manual_seed(tokens * 100 + experts)
    hidden, inter = 64, 48
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden ** 0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter ** 0.5).to(dtype)
    weights, ids = select_experts(torch.randn(tokens, experts, generator=gen).to(dtype), top_k, renormalize=True)
    assert torch.allclose(weights.float().sum(-1), torch.ones(tokens), atol=1e-2)
    ref = hf_experts(x.double(), w13.double(), w2.double(), weights.double(), ids)
    for impl in (fused_experts, fused_experts_op):
        out = impl(x, w13, w2, weights, ids)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_select_experts_without_renormalization_keeps_softmax_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    weights, ids = select_experts(logits, 2, renormalize=False)
    probs = torch.softmax(logits, -1)
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(weights, probs[:, :2])


def test_gptq_moe_checkpoint_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    """A GPTQ Qwen3-MoE checkpoint names the missing piece instead of loading garbage."""
    import json
    import shutil

    from folo_core import LLM

    path = shutil.copytree(tiny_model_dir("qwen3_moe"), tmp_path / "gptq-moe")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False,
                                     "sym": True}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="quantized MoE experts are not supported"):
        LLM(str(path), skip_tokenizer_init=True)
