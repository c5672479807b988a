"""Model families in the one decoder, each against HF transformers on tiny random checkpoints.

Every family's switches are exercised with greedy generation for 8 prompts of different
lengths in one ``generate`` call (naive backend; paged with chunked prefill and prefix
caching) and prefill log-probs within 1e-4 in float32. Windowed families also run in
``test_sliding_window.py``; Granite in ``test_granite.py``.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_greedy_matches_hf, assert_prefill_logprobs_match_hf, random_prompts

LONGROPE = dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.1, 1.2, 1.5, 2.0],
                              "long_factor": [2.0, 2.5, 3.0, 4.0], "original_max_position_embeddings": 48},
                original_max_position_embeddings=48, max_position_embeddings=192, partial_rotary_factor=0.5)
DYNAMIC = dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}, max_position_embeddings=48)
# name -> (tiny config, overrides, longest prompt, new tokens)
FAMILIES = {
    "phi3": ("phi3", {}, 70, 16),
    # LongRoPE with a partial rotary factor (Phi-4-mini's shape); prompts and outputs stay within
    # the original length, where HF and Folo both use the short factors (see the table test below).
    "phi3-longrope-partial": ("phi3", LONGROPE, 30, 16),
    "llama-rope-linear": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 4.0}), 70, 16),
    "llama-rope-llama3": ("llama", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), 70, 16),
    "qwen2-rope-yarn": ("qwen2", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 64}), 70, 16),
    # Dynamic NTK: prompts and generations cross the original 48 positions.
    "llama-rope-dynamic": ("llama", DYNAMIC, 70, 16),
    "olmo2": ("olmo2", {}, 70, 16),
    "gemma3": ("gemma3", {}, 70, 16),
    # Gemma 3 4B's scaled global RoPE, and a final-logit soft-cap (Gemma 2's; Gemma 3 allows it).
    "gemma3-linear-rope-softcap": ("gemma3", dict(final_logit_softcapping=3.0, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}), 70, 16),
    # Gemma 2: attention-logit and final-logit soft-caps, alternating sliding and full layers.
    "gemma2": ("gemma2", {}, 70, 16),
    "qwen2-moe": ("qwen2_moe", {}, 70, 16),
    "qwen3-moe": ("qwen3_moe", {}, 70, 16),
}
OPTIONS = [
    dict(attention_backend="naive", enable_prefix_caching=False),
    dict(attention_backend="paged", max_num_batched_tokens=32, enable_prefix_caching=True, block_size=8),
]


# Each prefix of a prompt as its own request against HF's full-sequence logits: under dynamic
# NTK a prefix past the original length has its own base, so that family's prompt log-probs
# are checked as prompt_logprobs of one request instead (the dynamic test below).
PREFIX_LOGPROB_FAMILIES = [name for name in FAMILIES if name != "llama-rope-dynamic"]


@pytest.fixture
def family(request, tiny_model_dir):
    kind, overrides, max_len, new_tokens = FAMILIES[request.param]
    return tiny_model_dir(kind, **overrides), max_len, new_tokens


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
@pytest.mark.parametrize("options", OPTIONS, ids=["naive", "paged-chunked-prefix"])
def test_greedy_matches_hf(family, options):
    path, max_len, new_tokens = family
    prompts = random_prompts(8, 512, seed=31, min_len=1, max_len=max_len)
    prompts[1] = prompts[0][:max_len // 2] + prompts[1][:10]  # a shared prefix for the prefix cache
    assert_greedy_matches_hf(path, prompts, new_tokens, **options)


@pytest.mark.parametrize("family", PREFIX_LOGPROB_FAMILIES, indirect=True)
def test_prefill_logprobs_match_hf(family):
    path, max_len, _ = family
    prompt = random_prompts(1, 512, seed=17, min_len=max_len - 6, max_len=max_len - 6)[0]
    assert_prefill_logprobs_match_hf(path, prompt, max_num_batched_tokens=16, block_size=8,
                                     enable_prefix_caching=True)


def test_dynamic_rope_prompt_logprobs_and_prefix_cache_follow_hf(tiny_model_dir):
    """Under dynamic NTK a prompt past the original length turns every key with its own length's
    base: its prompt log-probs (chunked, one request) are HF's full-sequence ones, and a longer
    prompt sharing its first 64 tokens reuses none of its cached blocks, so both match HF."""
    from folo_core import LLM, SamplingParams
    from helpers import hf_greedy, hf_logits

    path = tiny_model_dir("llama", **DYNAMIC)
    prompt = random_prompts(1, 512, seed=23, min_len=70, max_len=70)[0]
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", max_logprobs=-1, max_num_batched_tokens=16,
              block_size=8, enable_prefix_caching=True)
    assert llm.llm_engine.config.model.max_model_len == 192  # 48 positions times the factor 4
    output = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, prompt_logprobs=512),
                          use_tqdm=False)[0]
    reference = hf_logits(path, prompt).log_softmax(-1)
    for k, entry in enumerate(output.prompt_logprobs[1:]):
        ours = torch.tensor([entry[t].logprob for t in range(512)])
        torch.testing.assert_close(ours, reference[k], atol=1e-4, rtol=0)
    longer = prompt[:64] + random_prompts(1, 512, seed=24, min_len=12, max_len=12)[0]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in (prompt, longer)],
                                                         params, use_tqdm=False)]
    assert got == hf_greedy(path, [prompt, longer], 16)


def test_gemma2_attention_soft_cap_matters(tiny_model_dir):
    """The tiny Gemma 2's cap bends its attention scores: without it HF's log-probs move far past the
    tolerance the tests above hold Folo to, so matching them proves the cap is applied."""
    from transformers import AutoModelForCausalLM

    prompt = torch.tensor([random_prompts(1, 512, seed=17, min_len=40, max_len=40)[0]])
    logprobs = []
    for cap in (1.0, None):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("gemma2", attn_logit_softcapping=cap)),
                                                     dtype=torch.float32).eval()
        with torch.no_grad():
            logprobs.append(model(prompt).logits.log_softmax(-1))
    assert (logprobs[0] - logprobs[1]).abs().max() > 1e-2


def test_longrope_table_matches_hf_position_by_position():
    """Short factors before ``original_max_position_embeddings``, long ones from there on: what HF
    computes for a decoded token at each position."""
    from transformers import AutoConfig
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from folo_models.layers.rotary_embedding import RotaryEmbedding

    cfg = AutoConfig.for_model("phi3", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **LONGROPE)
    hf, ours = Phi3RotaryEmbedding(cfg), RotaryEmbedding(cfg, 16, 192)
    x = torch.zeros(1, 1, 16)
    for position in (0, 20, 47, 48, 49, 100, 191):
        cos, sin = hf(x, torch.tensor([[position]]))
        torch.testing.assert_close(ours.cos[position], cos[0, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.sin_signed[position, 4:], sin[0, 0, 4:], rtol=0, atol=1e-6)
    assert ours.rotary_dim == 8
    # The long factors do apply from position 48 (and only there): a table with long == short differs.
    same = {**LONGROPE["rope_scaling"], "long_factor": LONGROPE["rope_scaling"]["short_factor"]}
    short_only = RotaryEmbedding(AutoConfig.for_model(
        "phi3", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **{**LONGROPE, "rope_scaling": same}),
        16, 192)
    assert torch.equal(short_only.cos[:48], ours.cos[:48]) and not torch.allclose(short_only.cos[48:], ours.cos[48:])


def test_dynamic_rope_angles_match_hf_per_length_without_a_position_table():
    """Under dynamic NTK, cos/sin for (position, length) pairs are what HF computes for a sequence of
    that length; plain positions p count as length p + 1; no table by position is built."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from folo_models.layers.rotary_embedding import RotaryEmbedding

    cfg = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **DYNAMIC)
    ours = RotaryEmbedding(cfg, 16, 192)
    assert not hasattr(ours, "cos") and not hasattr(ours, "sin_signed")
    x = torch.zeros(1, 1, 16)
    for position, length in ((0, 1), (30, 48), (47, 100), (60, 61), (150, 192)):
        hf = LlamaRotaryEmbedding(cfg)
        hf(x, torch.arange(length)[None])  # grows HF's base for a sequence of this length
        cos, sin = hf(x, torch.tensor([[position]]))
        got_cos, got_sin = ours.cos_sin(torch.tensor([[position], [length]]), torch.float32)
        torch.testing.assert_close(got_cos[0, 0], cos[0, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(got_sin[0, 0, 8:], sin[0, 0, 8:], rtol=0, atol=1e-6)
    plain = ours.cos_sin(torch.tensor([5, 99]), torch.float32)
    paired = ours.cos_sin(torch.tensor([[5, 99], [6, 100]]), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(plain, paired))


def test_a_fused_checkpoint_tensor_loads_like_its_shards():
    """Phi-3's fused qkv_proj tensor splits into its shards: loaded whole, it gives the weights the
    split names Llama uses give (``test_tensor_parallel`` runs Phi-3 on two ranks too)."""
    from folo_models.layers.linear import QKVParallelLinear

    layer = QKVParallelLinear(8, 2, num_heads=2, num_kv_heads=1)
    fused = torch.arange(8 * 8, dtype=torch.float32).view(8, 8)
    layer.weight_loader(layer.weight, fused)
    by_shard = QKVParallelLinear(8, 2, num_heads=2, num_kv_heads=1)
    for shard, part in zip("qkv", fused.split([4, 2, 2])):
        by_shard.weight_loader(by_shard.weight, part, shard)
    assert torch.equal(layer.weight, by_shard.weight) and torch.equal(layer.weight, fused)
