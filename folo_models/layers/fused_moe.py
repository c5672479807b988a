"""Mixture-of-experts layer: top-k routing and every expert's MLP in a fixed set of ops.

HF transformers runs the experts in a Python loop, one pair of matmuls per expert
hit by the batch: on CPU at decode batch sizes that is dozens of small matmuls a
layer plus their dispatch. Here the (token, expert) pairs are sorted by expert
once and both projections of all experts run as one grouped matmul each
(``torch._grouped_mm``, one call over contiguous row groups), so a layer costs the
same few ops whatever the routing (``benchmarks/fused_moe.py`` measures it against
the per-expert loop). A compiled graph holds it as the ``folo::fused_experts`` op:
the grouped matmul's fake kernel accepts only bf16, so inductor must not trace it.

Weights follow vLLM's names: ``w13_weight`` [experts, 2 * intermediate, hidden]
(gate rows, then up rows) and ``w2_weight`` [experts, hidden, intermediate].
Under tensor parallelism every rank holds a slice of every expert's intermediate
dimension (vLLM's default, not expert parallelism) and the partial outputs are
summed by an all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folo_core.distributed.parallel_state import get_tp_rank, get_tp_size, tensor_model_parallel_all_reduce
from folo_core.kernels.ops import define_op
from folo_models.weights import default_weight_loader

# HF checkpoint projection name -> (our parameter, shard of w13 or None for w2).
EXPERT_PROJECTIONS = {"gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1), "down_proj": ("w2_weight", None)}


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's ``top_k`` experts and their weights: softmax in float32 over all
    experts, the ``top_k`` largest, renormalized to sum to 1 when asked (HF's order)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype), ids


def fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """``sum_k weight_k * down_e(silu(gate_e(x)) * up_e(x))`` over each token's experts.

    The T * k (token, expert) pairs are sorted by expert so each expert's rows are
    contiguous; ``offs`` holds where each expert's rows end (experts no token chose
    get empty groups)."""
    top_k = topk_ids.shape[1]
    flat_ids = topk_ids.flatten()
    order = flat_ids.argsort(stable=True)
    tokens = order // top_k
    offs = torch.bincount(flat_ids, minlength=w13.shape[0]).cumsum(0).to(torch.int32)
    gate_up = torch._grouped_mm(x.index_select(0, tokens), w13.transpose(1, 2), offs=offs)
    gate, up = gate_up.chunk(2, dim=-1)
    down = torch._grouped_mm(F.silu(gate) * up, w2.transpose(1, 2), offs=offs)
    down = down * topk_weights.flatten().index_select(0, order).unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, tokens, down)


fused_experts_op = define_op(
    "fused_experts(Tensor x, Tensor w13, Tensor w2, Tensor topk_weights, Tensor topk_ids) -> Tensor",
    fused_experts, lambda x, w13, w2, topk_weights, topk_ids: torch.empty_like(x))


class FusedMoE(nn.Module):
    """The routed experts of one layer; ``forward`` takes the router's logits."""

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, params_dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.intermediate_per_rank = intermediate_size // self.tp_size
        self.w13_weight = nn.Parameter(
            torch.empty(num_experts, 2 * self.intermediate_per_rank, hidden_size, dtype=params_dtype),
            requires_grad=False)
        self.w2_weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, self.intermediate_per_rank, dtype=params_dtype),
            requires_grad=False)
        for param in (self.w13_weight, self.w2_weight):
            param.weight_loader = self.weight_loader

    def forward(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = select_experts(router_logits, self.top_k, self.renormalize)
        experts = fused_experts_op if torch.compiler.is_compiling() else fused_experts
        out = experts(hidden_states, self.w13_weight, self.w2_weight, topk_weights, topk_ids)
        return tensor_model_parallel_all_reduce(out)

    def checkpoint_tensors(self, prefix: str) -> dict[str, tuple[str, tuple[int, int | None]]]:
        """HF tensor name -> (parameter name, (expert, w13 shard or None for w2)): one tensor
        per expert and projection, as Hub checkpoints and HF's ``save_pretrained`` write them."""
        return {f"{prefix}.{expert}.{projection}.weight": (f"{prefix}.{param}", (expert, shard))
                for expert in range(self.num_experts) for projection, (param, shard) in EXPERT_PROJECTIONS.items()}

    def _rank_rows(self, loaded: torch.Tensor, dim: int) -> torch.Tensor:
        return loaded.narrow(dim, self.tp_rank * self.intermediate_per_rank, self.intermediate_per_rank)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: tuple[int, int | None]) -> None:
        """One expert's projection, sliced to this rank's intermediate rows (columns of w2)."""
        expert, shard = shard_id
        if shard is None:
            return default_weight_loader(param.data[expert], self._rank_rows(loaded, 1))
        rows = self.intermediate_per_rank
        default_weight_loader(param.data[expert].narrow(0, shard * rows, rows), self._rank_rows(loaded, 0))
