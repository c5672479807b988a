"""One decoder-only transformer for Llama, Mistral, Phi-3, Qwen2/2.5, Qwen3, Granite, Gemma 2 and 3,
OLMo 2 and Qwen2/3-MoE.

They differ only in switches read from the HF config: bias on q/k/v (Qwen2),
RMSNorm on q and k per head (Qwen3) or over the whole projections (OLMo 2), norms
before each branch, after it (OLMo 2) or both (Gemma), Gemma's (1 + w) norms,
GeGLU, scaled embeddings, attention-logit (Gemma 2) and final-logit soft-caps, explicit
``head_dim``, tied embeddings,
Granite's multipliers (embeddings, residual branches, attention scale, logits),
each layer's sliding window (Mistral, Phi-3; Qwen2/3 with ``use_sliding_window``),
checkpoints with fused projections (Phi-3), the rotary variant (see
``rotary_embedding``) and, for the MoE families, which layers route each token to
its top-k experts (plus Qwen2-MoE's shared expert behind a sigmoid gate) instead of
one MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from folo_core.attention.layer import Attention
from folo_core.hf_utils import layer_sliding_windows, max_positions
from folo_core.models import CheckpointError, ModelLoadContext
from folo_core.quantization import QuantizationConfig
from folo_models.layers.activation import ACTIVATIONS
from folo_models.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from folo_models.layers.fused_moe import FusedMoE
from folo_models.layers.layernorm import QKNorm, RMSNorm
from folo_models.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    tp_rank_and_size,
)
from folo_models.layers.rotary_embedding import RotaryEmbedding, rope_layer_types
from folo_models.weights import default_weight_loader, iterate_weights


QKV_BIAS_ARCHS = ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM")
QK_NORM_ARCHS = {"Qwen3ForCausalLM": "per_head", "Qwen3MoeForCausalLM": "per_head", "Olmo2ForCausalLM": "projection",
                 "Gemma3ForCausalLM": "per_head"}
# Where each layer's norms sit, role -> checkpoint name: before attention / the MLP ("pre_*")
# and after them, before the branch joins the residual stream ("post_*").
NORM_LAYOUTS = {
    "pre": {"pre_attn": "input_layernorm", "pre_mlp": "post_attention_layernorm"},  # Llama
    "post": {"post_attn": "post_attention_layernorm", "post_mlp": "post_feedforward_layernorm"},  # OLMo 2
    "sandwich": {"pre_attn": "input_layernorm", "post_attn": "post_attention_layernorm",  # Gemma 2/3
                 "pre_mlp": "pre_feedforward_layernorm", "post_mlp": "post_feedforward_layernorm"},
}
NORM_LAYOUT_ARCHS = {"Olmo2ForCausalLM": "post", "Gemma2ForCausalLM": "sandwich", "Gemma3ForCausalLM": "sandwich"}
GEMMA_ARCHS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")  # RMSNorm by (1 + w), embeddings scaled by sqrt(hidden_size)
MOE_ARCHS = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


@dataclass(frozen=True)
class MoESpec:
    """Qwen2/3-MoE's expert switches."""

    num_experts: int
    top_k: int
    intermediate_size: int  # of each routed expert
    renormalize: bool  # norm_topk_prob
    shared_expert_intermediate_size: int  # 0: no shared expert (Qwen3-MoE)
    sparse_layers: tuple[bool, ...]  # which layers route (decoder_sparse_step, mlp_only_layers)

    @classmethod
    def from_hf_config(cls, cfg: Any) -> "MoESpec":
        step, dense = getattr(cfg, "decoder_sparse_step", 1) or 1, set(getattr(cfg, "mlp_only_layers", None) or ())
        return cls(
            num_experts=cfg.num_experts,
            top_k=cfg.num_experts_per_tok,
            intermediate_size=cfg.moe_intermediate_size,
            renormalize=bool(cfg.norm_topk_prob),
            shared_expert_intermediate_size=getattr(cfg, "shared_expert_intermediate_size", 0) or 0,
            sparse_layers=tuple(i not in dense and cfg.num_experts > 0 and (i + 1) % step == 0
                                for i in range(cfg.num_hidden_layers)),
        )


@dataclass(frozen=True)
class DecoderSpec:
    """The architecture switches, read once from the HF config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: str | None  # "per_head" (Qwen3) or "projection" (OLMo 2: the whole q and k projections)
    norm_layout: str  # a key of NORM_LAYOUTS
    norm_offset: float  # Gemma: 1.0 (the norm scales by 1 + w)
    norm_scale_in_float32: bool  # the norm weight applies before rounding (OLMo 2, Gemma)
    activation: str  # a key of ACTIVATIONS
    scale_embeddings: bool  # Gemma: embeddings times sqrt(hidden_size), rounded to the model dtype
    final_logit_softcapping: float | None  # logits = cap * tanh(logits / cap)
    attn_logit_softcapping: float | None  # the same on attention scores (the backend's ``logits_soft_cap``)
    layer_rope_types: tuple[str | None, ...]  # each layer's key into per-type rope_parameters (Gemma 3)
    tie_word_embeddings: bool
    # Granite's scalars (1.0 and head_dim ** -0.5 elsewhere).
    embedding_multiplier: float
    residual_multiplier: float
    attention_scale: float
    logits_scaling: float
    layer_windows: tuple[int | None, ...]  # each layer's sliding window (None: full attention)
    fused_checkpoint: bool  # the checkpoint ships qkv_proj / gate_up_proj already fused (Phi-3)
    moe: MoESpec | None

    @classmethod
    def from_hf_config(cls, arch: str, cfg: Any, max_position: int) -> "DecoderSpec":
        activation = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu")
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"hidden_act {activation!r} is not supported (only {', '.join(ACTIVATIONS)})")
        rope_types = rope_layer_types(cfg)
        layer_types = tuple(getattr(cfg, "layer_types", None) or ())
        if rope_types and (len(layer_types) != cfg.num_hidden_layers or set(layer_types) - set(rope_types)):
            raise CheckpointError(f"rope_parameters are given for layer types {rope_types}, "
                                  f"but layer_types is {list(layer_types)}")
        attention_bias = bool(getattr(cfg, "attention_bias", False))
        num_heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.rms_norm_eps,
            max_position=max_position,
            qkv_bias=True if arch in QKV_BIAS_ARCHS else attention_bias,
            o_bias=False if arch in QKV_BIAS_ARCHS else attention_bias,
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
            qk_norm=QK_NORM_ARCHS.get(arch),
            norm_layout=NORM_LAYOUT_ARCHS.get(arch, "pre"),
            norm_offset=1.0 if arch in GEMMA_ARCHS else 0.0,
            norm_scale_in_float32=arch in NORM_LAYOUT_ARCHS,
            activation=activation,
            scale_embeddings=arch in GEMMA_ARCHS,
            final_logit_softcapping=getattr(cfg, "final_logit_softcapping", None),
            attn_logit_softcapping=getattr(cfg, "attn_logit_softcapping", None),
            layer_rope_types=layer_types if rope_types else (None,) * cfg.num_hidden_layers,
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            embedding_multiplier=float(getattr(cfg, "embedding_multiplier", 1.0)),
            residual_multiplier=float(getattr(cfg, "residual_multiplier", 1.0)),
            attention_scale=float(getattr(cfg, "attention_multiplier", None)
                                  or (getattr(cfg, "query_pre_attn_scalar", None) or head_dim) ** -0.5),
            logits_scaling=float(getattr(cfg, "logits_scaling", 1.0)),
            layer_windows=layer_sliding_windows(cfg),
            fused_checkpoint=arch == "Phi3ForCausalLM",
            moe=MoESpec.from_hf_config(cfg) if arch in MOE_ARCHS else None,
        )


def check_tensor_parallel(spec: DecoderSpec, tp_size: int) -> None:
    """The shapes ``tp_size`` ranks can split; anything else is refused with the reason."""
    if tp_size == 1:
        return
    problems = []
    if spec.num_heads % tp_size:
        problems.append(f"num_attention_heads ({spec.num_heads})")
    if spec.num_kv_heads % tp_size and tp_size % spec.num_kv_heads:
        problems.append(f"num_key_value_heads ({spec.num_kv_heads}; nor does it divide tensor_parallel_size)")
    sizes = {"intermediate_size": spec.intermediate_size}
    if spec.moe is not None:
        sizes["moe_intermediate_size"] = spec.moe.intermediate_size
        sizes["shared_expert_intermediate_size"] = spec.moe.shared_expert_intermediate_size
    problems += [f"{name} ({size})" for name, size in sizes.items() if size % tp_size]
    if problems:
        raise CheckpointError(f"tensor_parallel_size={tp_size} does not divide " + ", ".join(problems))
    if spec.qk_norm == "projection":
        raise CheckpointError("tensor parallelism is not supported for a QK-norm over the whole projection "
                              "(OLMo 2): each rank would need every head's variance")


class DecoderAttention(nn.Module):
    """Each rank holds ``heads / ranks`` query heads and its share of the KV heads (a replica of
    one when there are more ranks than KV heads); ``o_proj`` sums the ranks' outputs."""

    def __init__(self, spec: DecoderSpec, ctx: ModelLoadContext, prefix: str, sliding_window: int | None) -> None:
        super().__init__()
        quant = ctx.quant_config
        self.qkv_proj = QKVParallelLinear(spec.hidden_size, spec.head_dim, spec.num_heads, spec.num_kv_heads,
                                          spec.qkv_bias, quant, f"{prefix}.qkv_proj", ctx.dtype)
        self.num_heads = spec.num_heads // self.qkv_proj.tp_size
        self.num_kv_heads = self.qkv_proj.num_kv_heads_per_rank
        self.head_dim = spec.head_dim
        self.q_size = self.num_heads * spec.head_dim
        self.kv_size = self.num_kv_heads * spec.head_dim
        self.o_proj = RowParallelLinear(spec.num_heads * spec.head_dim, spec.hidden_size, spec.o_bias, quant,
                                        f"{prefix}.o_proj", ctx.dtype)
        self.qk_norm = self.q_norm = self.k_norm = None
        if spec.qk_norm == "per_head":
            self.qk_norm = QKNorm(self.num_heads, self.num_kv_heads, spec.head_dim, spec.rms_norm_eps, spec.norm_offset)
        elif spec.qk_norm == "projection":
            self.q_norm = RMSNorm(self.q_size, spec.rms_norm_eps, scale_in_float32=True)
            self.k_norm = RMSNorm(self.kv_size, spec.rms_norm_eps, scale_in_float32=True)
        self.attn = Attention(ctx.attn_backend, self.num_heads, spec.head_dim, spec.attention_scale,
                              self.num_kv_heads, prefix=f"{prefix}.attn", sliding_window=sliding_window,
                              logits_soft_cap=spec.attn_logit_softcapping)

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor], hidden_states: torch.Tensor) -> torch.Tensor:
        # Queries and keys sit side by side in the fused output: norm and rotate them as one
        # [T, heads + kv_heads, D] view, then hand the attention layer views, never copies.
        qk, v = self.qkv_proj(hidden_states).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=-1)
        qk = qk.unflatten(-1, (self.num_heads + self.num_kv_heads, self.head_dim))
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        q, k = RotaryEmbedding.apply(cos_sin, qk).split([self.num_heads, self.num_kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, v))


class DecoderMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, quant: QuantizationConfig | None,
                 prefix: str, dtype: torch.dtype, activation: str = "silu") -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias, quant,
                                                       f"{prefix}.gate_up_proj", dtype)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias, quant, f"{prefix}.down_proj", dtype)
        self.act_fn = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class SparseMoeBlock(nn.Module):
    """Routed experts, plus Qwen2-MoE's shared expert scaled by ``sigmoid(shared_expert_gate(x))``.
    The router stays unquantized (as in GPTQ checkpoints); quantized experts are refused."""

    def __init__(self, spec: DecoderSpec, ctx: ModelLoadContext, prefix: str) -> None:
        super().__init__()
        moe = spec.moe
        if ctx.quant_config is not None:
            raise CheckpointError("quantized MoE experts are not supported yet (load the unquantized checkpoint)")
        if spec.activation != "silu":  # fused_experts computes silu(gate) * up
            raise CheckpointError(f"MoE experts with hidden_act {spec.activation!r} are not supported (only 'silu')")
        self.gate = ReplicatedLinear(spec.hidden_size, moe.num_experts, prefix=f"{prefix}.gate", params_dtype=ctx.dtype)
        self.experts = FusedMoE(moe.num_experts, moe.top_k, spec.hidden_size, moe.intermediate_size,
                                moe.renormalize, ctx.dtype)
        self.shared_expert = self.shared_expert_gate = None
        if moe.shared_expert_intermediate_size:
            self.shared_expert = DecoderMLP(spec.hidden_size, moe.shared_expert_intermediate_size, False, None,
                                            f"{prefix}.shared_expert", ctx.dtype)
            self.shared_expert_gate = ReplicatedLinear(spec.hidden_size, 1, prefix=f"{prefix}.shared_expert_gate",
                                                       params_dtype=ctx.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class DecoderLayer(nn.Module):
    """Attention and MLP branches joining the residual stream, with the norms where the family
    puts them (``NORM_LAYOUTS``): before each branch (Llama), after it (OLMo 2) or both (Gemma)."""

    def __init__(self, spec: DecoderSpec, ctx: ModelLoadContext, layer_idx: int) -> None:
        super().__init__()
        prefix = f"model.layers.{layer_idx}"
        self.self_attn = DecoderAttention(spec, ctx, f"{prefix}.self_attn", spec.layer_windows[layer_idx])
        if spec.moe is not None and spec.moe.sparse_layers[layer_idx]:
            self.mlp = SparseMoeBlock(spec, ctx, f"{prefix}.mlp")
        else:
            self.mlp = DecoderMLP(spec.hidden_size, spec.intermediate_size, spec.mlp_bias, ctx.quant_config,
                                  f"{prefix}.mlp", ctx.dtype, spec.activation)
        self.norms: dict[str, RMSNorm] = {}  # role -> the module registered under its checkpoint name
        for role, name in NORM_LAYOUTS[spec.norm_layout].items():
            self.add_module(name, make_norm(spec))
            self.norms[role] = getattr(self, name)
        self.residual_multiplier = spec.residual_multiplier

    @staticmethod
    def _join(branch: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm | None):
        """Add a branch to the residual stream; returns (the next branch's input, the stream)."""
        if norm is None:
            residual = branch if residual is None else branch + residual
            return residual, residual
        return (norm(branch), branch) if residual is None else norm(branch, residual)

    def _branch_output(self, out: torch.Tensor, role: str) -> torch.Tensor:
        norm = self.norms.get(role)
        if norm is not None:
            out = norm(out)
        # Granite scales each branch before it joins the stream.
        return out if self.residual_multiplier == 1.0 else out * self.residual_multiplier

    def forward(self, cos_sin, hidden_states, residual):
        """Returns the MLP branch and the residual stream; the next layer (or the final norm) adds them."""
        hidden_states, residual = self._join(hidden_states, residual, self.norms.get("pre_attn"))
        hidden_states = self._branch_output(self.self_attn(cos_sin, hidden_states), "post_attn")
        hidden_states, residual = self._join(hidden_states, residual, self.norms.get("pre_mlp"))
        return self._branch_output(self.mlp(hidden_states), "post_mlp"), residual


def make_norm(spec: DecoderSpec) -> RMSNorm:
    return RMSNorm(spec.hidden_size, spec.rms_norm_eps, spec.norm_scale_in_float32, spec.norm_offset)


class DecoderModel(nn.Module):
    def __init__(self, spec: DecoderSpec, hf_config: Any, ctx: ModelLoadContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, ctx.dtype)
        # One rotary table per rope layer type (one in all for most families).
        self.rope_keys = [key or "all" for key in spec.layer_rope_types]
        self.rotary_embs = nn.ModuleDict({key or "all": RotaryEmbedding(hf_config, spec.head_dim, spec.max_position, key)
                                          for key in dict.fromkeys(spec.layer_rope_types)})
        self.layers = nn.ModuleList(DecoderLayer(spec, ctx, i) for i in range(spec.num_layers))
        self.norm = make_norm(spec)
        self.embedding_multiplier = spec.embedding_multiplier
        if spec.scale_embeddings:  # HF rounds sqrt(hidden_size) to the model dtype first
            self.embedding_multiplier = float(torch.tensor(spec.hidden_size ** 0.5, dtype=ctx.dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.embed_tokens(input_ids), None
        if self.embedding_multiplier != 1.0:
            hidden_states = hidden_states * self.embedding_multiplier
        tables = {key: emb.cos_sin(positions, hidden_states.dtype) for key, emb in self.rotary_embs.items()}
        for layer, key in zip(self.layers, self.rope_keys):
            hidden_states, residual = layer(tables[key], hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


# HF checkpoint name fragment -> (our fused parameter fragment, shard id).
STACKED_PARAMS = (
    (".q_proj.", ".qkv_proj.", "q"),
    (".k_proj.", ".qkv_proj.", "k"),
    (".v_proj.", ".qkv_proj.", "v"),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
    (".q_norm.", ".qk_norm.", "q"),
    (".k_norm.", ".qk_norm.", "k"),
)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class DecoderForCausalLM(nn.Module):
    def __init__(self, arch: str, ctx: ModelLoadContext) -> None:
        super().__init__()
        hf_config = ctx.hf_config
        max_position = max(max_positions(hf_config) or 0, 1)
        self.spec = DecoderSpec.from_hf_config(arch, hf_config, max_position)
        check_tensor_parallel(self.spec, tp_rank_and_size()[1])
        self.model = DecoderModel(self.spec, hf_config, ctx)
        self.lm_head = ParallelLMHead(self.spec.vocab_size, self.spec.hidden_size, ctx.dtype)
        if self.spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden_states)
        if self.spec.logits_scaling != 1.0:
            logits = logits / self.spec.logits_scaling
        cap = self.spec.final_logit_softcapping
        return logits if not cap else torch.tanh(logits / cap) * cap

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors into the fused parameters; every gap is an error."""
        params = dict(self.named_parameters(remove_duplicate=False))
        expected = self._expected_tensors(params)
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith(IGNORED_SUFFIXES) or (self.spec.tie_word_embeddings and name == "lm_head.weight"):
                continue
            if name not in expected:
                raise CheckpointError(f"checkpoint tensor {name!r} does not belong to this model")
            param_name, shard_id = expected[name]
            param = params[param_name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            try:
                loader(param, tensor, shard_id)
            except CheckpointError as exc:
                raise CheckpointError(f"checkpoint tensor {name!r}: {exc}") from None
            loaded.add(name)
        missing = sorted(set(expected) - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointError(f"checkpoint is missing tensor(s): {shown}")
        for module in self.modules():
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)

    def _expected_tensors(self, params: dict[str, nn.Parameter]) -> dict[str, tuple[str, object]]:
        """HF tensor name -> (our parameter name, fused shard id)."""
        expected: dict[str, tuple[str, object]] = {}
        for param_name in params:
            if self.spec.tie_word_embeddings and param_name == "lm_head.weight":
                continue
            stacked = () if self.spec.fused_checkpoint else STACKED_PARAMS
            fused = [(hf, ours, shard) for hf, ours, shard in stacked if ours in param_name]
            if not fused:
                expected[param_name] = (param_name, None)
            for hf, ours, shard in fused:
                expected[param_name.replace(ours, hf)] = (param_name, shard)
        for prefix, module in self.named_modules():
            if isinstance(module, FusedMoE):
                for param in ("w13_weight", "w2_weight"):
                    del expected[f"{prefix}.{param}"]
                expected.update(module.checkpoint_tensors(prefix))
        return expected


def load_decoder(arch: str, ctx: ModelLoadContext) -> DecoderForCausalLM:
    """Build the model on the target device in the target dtype and load its weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(ctx.dtype)  # norms and other plain parameters follow the model dtype
    try:
        with torch.device(ctx.device):
            model = DecoderForCausalLM(arch, ctx)
    finally:
        torch.set_default_dtype(previous)
    model.load_weights(iterate_weights(ctx.model_path))
    return model.eval()
