"""Shared test helpers: tiny random HF checkpoints and HF reference generation."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CONFIGS: dict[str, dict] = {
    # GQA 2, tied embeddings, QKV bias.
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0),
    # GQA 4, explicit head_dim (32, not 64/4), QK-norm, untied.
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=64, intermediate_size=160,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=512,
                  max_position_embeddings=512, tie_word_embeddings=False, rope_theta=1000000.0),
    # Granite: Llama plus multipliers (embeddings, residual branches, attention scale, logits); GQA 2, tied.
    "granite": dict(architectures=["GraniteForCausalLM"], model_type="granite", hidden_size=64,
                    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
                    embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125,
                    logits_scaling=8.0),
    # GQA 3, untied, head_dim 16.
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=96, intermediate_size=192,
                  num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0),
    # Mistral: Llama plus a sliding window (12 tokens, shorter than most test prompts); GQA 2, untied.
    "mistral": dict(architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=64,
                    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0,
                    sliding_window=12),
    # Phi-3: fused qkv_proj / gate_up_proj in the checkpoint, a sliding window (16); GQA 2, untied.
    "phi3": dict(architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=16,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # Gemma 3 (text): sandwich norms by (1 + w), GeGLU (gelu-tanh), embeddings scaled by sqrt(64),
    # per-head QK-norm, query_pre_attn_scalar 24 (not head_dim 32), sliding layers (window 10) with
    # every third layer full, two RoPE bases; GQA 2, tied.
    "gemma3": dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_size=64,
                   intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=32, query_pre_attn_scalar=24, vocab_size=512, max_position_embeddings=512,
                   sliding_window=10, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                   "sliding_attention"],
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                   pad_token_id=0, bos_token_id=2, eos_token_id=1),
    # Gemma 2: Gemma 3's norms and GeGLU without QK-norm, one RoPE base, sliding and full layers
    # alternating (the config's default), and soft-caps on attention scores and final logits, small
    # enough that a tiny random model's scores reach them.
    "gemma2": dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", hidden_size=64,
                   intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=32, query_pre_attn_scalar=24, vocab_size=512, max_position_embeddings=512,
                   sliding_window=10, attn_logit_softcapping=1.0, final_logit_softcapping=3.0,
                   pad_token_id=0, bos_token_id=2, eos_token_id=1),
    # OLMo 2: norms after attention and after the MLP, QK-norm over the whole projections; GQA 2, untied.
    "olmo2": dict(architectures=["Olmo2ForCausalLM"], model_type="olmo2", hidden_size=64, intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=512, tie_word_embeddings=False, rope_theta=500000.0,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # Qwen2-MoE: 8 experts, top 2 without renormalization, a shared expert behind a sigmoid gate,
    # layer 1 dense (mlp_only_layers); QKV bias, GQA 2, untied.
    "qwen2_moe": dict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", hidden_size=64,
                      intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[1], num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0),
    # Qwen3-MoE: 6 experts, top 3 renormalized, no shared expert, every second layer sparse
    # (decoder_sparse_step 2); QK-norm, head_dim 32, GQA 4, tied.
    "qwen3_moe": dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=64,
                      intermediate_size=128, moe_intermediate_size=48, num_experts=6, num_experts_per_tok=3,
                      norm_topk_prob=True, decoder_sparse_step=2, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=32, vocab_size=512, max_position_embeddings=512,
                      tie_word_embeddings=True, rope_theta=1000000.0),
}


def build_tiny_model(kind: str, out_dir: Path, seed: int = 0, **overrides) -> Path:
    """Save a random HF model (float32 safetensors) built from a config and a fixed seed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {**TINY_CONFIGS[kind], **overrides}
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, initializer_range=0.1, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out_dir))
    return out_dir


def hf_greedy(model_path: str | Path, prompts: list[list[int]], max_new_tokens: int,
              dtype: torch.dtype = torch.float32) -> list[list[int]]:
    """HF transformers greedy continuation of each prompt (no EOS stop)."""
    from transformers import AutoModelForCausalLM

    from folo_core.hf_utils import dynamic_rope_scaling

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).eval()
    # HF's dynamic NTK rotary keeps the longest length it has seen across calls: a fresh model
    # per prompt gives each prompt HF's own single-sequence result.
    fresh = dynamic_rope_scaling(model.config) is not None
    outputs = []
    with torch.inference_mode():
        for ids in prompts:
            if fresh:
                model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).eval()
            input_ids = torch.tensor([ids])
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            outputs.append(out[0, len(ids):].tolist())
    return outputs


def hf_logits(model_path: str | Path, ids: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def random_prompts(n: int, vocab: int, seed: int = 0, min_len: int = 1, max_len: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (n_,), generator=g).tolist() for n_ in lengths]


def assert_greedy_matches_hf(model_path: str | Path, prompts: list[list[int]], max_tokens: int, **llm_options) -> None:
    """Folo's greedy continuations of ``prompts`` in one ``generate`` call (float32) are HF's."""
    from folo_core import LLM, SamplingParams

    expected = hf_greedy(model_path, prompts, max_tokens)
    llm = LLM(str(model_path), skip_tokenizer_init=True, dtype="float32", **llm_options)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected


def assert_prefill_logprobs_match_hf(model_path: str | Path, prompt: list[int], vocab: int = 512,
                                     atol: float = 1e-4, **llm_options) -> None:
    """The log-probs Folo gives after every prefix of ``prompt`` are HF's full-sequence ones within ``atol``."""
    from folo_core import LLM, SamplingParams

    reference = hf_logits(model_path, prompt).log_softmax(-1)
    llm = LLM(str(model_path), skip_tokenizer_init=True, dtype="float32", max_logprobs=-1, **llm_options)
    outputs = llm.generate([{"prompt_token_ids": prompt[:k]} for k in range(1, len(prompt) + 1)],
                           SamplingParams(temperature=0, max_tokens=1, logprobs=vocab), use_tqdm=False)
    for k, output in enumerate(outputs):
        ours = torch.full((vocab,), float("nan"))
        for token_id, lp in output.outputs[0].logprobs[0].items():
            ours[token_id] = lp.logprob
        torch.testing.assert_close(ours, reference[k], atol=atol, rtol=0)
