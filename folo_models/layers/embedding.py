"""Token embedding and LM head, split by vocabulary rows across tensor-parallel ranks.

Each rank holds ``ceil(vocab / ranks)`` rows (the last rank's tail is zero
padding). The embedding looks up only the ids in its rows, zeroes the others and
sums the ranks' lookups by all-reduce; the LM head computes its rows' logits and
gathers the ranks' columns, so every rank sees the whole vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folo_core.distributed.parallel_state import tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce
from folo_core.quantization import UnquantizedLinearMethod
from folo_core.utils import cdiv
from folo_models.layers.linear import tp_rank_and_size
from folo_models.weights import default_weight_loader


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, params_dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.vocab_size = vocab_size
        self.rows_per_rank = cdiv(vocab_size, self.tp_size)
        self.vocab_start = self.tp_rank * self.rows_per_rank
        self.weight = nn.Parameter(torch.zeros(self.rows_per_rank, hidden_size, dtype=params_dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if self.tp_size == 1:
            default_weight_loader(param.data, loaded)
            return
        rows = loaded[self.vocab_start:self.vocab_start + self.rows_per_rank]
        default_weight_loader(param.data[:len(rows)], rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.rows_per_rank)
        embedded = F.embedding(local.masked_fill(~mine, 0), self.weight).masked_fill(~mine.unsqueeze(-1), 0)
        return tensor_model_parallel_all_reduce(embedded)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to vocabulary logits (each rank its rows, gathered).

    The projection runs through the unquantized linear method, so on CPU its weight is
    packed for its CPU kernel after loading; a tied head then keeps its own packed copy and the
    embedding keeps the plain one (the largest matmul of a decode step, 1.5x faster).
    """

    def __init__(self, vocab_size: int, hidden_size: int, params_dtype: torch.dtype) -> None:
        super().__init__(vocab_size, hidden_size, params_dtype)
        self.quant_method = UnquantizedLinearMethod()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.quant_method.apply(self, hidden_states)
        if self.tp_size == 1:
            return logits
        return tensor_model_parallel_all_gather(logits)[:, :self.vocab_size]
