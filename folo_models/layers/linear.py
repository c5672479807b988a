"""Linear layers whose weights a quantization method creates and applies.

Shaped after vLLM/nano-vllm's tensor-parallel linears: column-parallel layers
split the output dimension across ranks (each rank keeps its slice of the
output), the row-parallel one the input (each rank's partial products are summed
by an all-reduce, the bias added once after it). The weight loaders take the
rank's slice of each checkpoint tensor. With one rank every split is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from folo_core.distributed.parallel_state import get_tp_rank, get_tp_size, tensor_model_parallel_all_reduce
from folo_core.models import CheckpointError
from folo_core.quantization import QuantizationConfig, QuantizationMethod, UnquantizedLinearMethod
from folo_models.weights import default_weight_loader


def tp_rank_and_size() -> tuple[int, int]:
    """This process's tensor-parallel rank and world size."""
    return get_tp_rank(), get_tp_size()


class LinearBase(nn.Module):
    """``y = x W^T + b`` through the layer's quantization method."""

    split_output = False
    split_input = False
    shard_names: tuple[str | int, ...] = ()  # fused shards, in output order

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool,
                 quant_config: QuantizationConfig | None, prefix: str, params_dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.prefix = prefix
        self.input_size_per_partition = input_size // self.tp_size if self.split_input else input_size
        self.output_sizes = output_sizes  # of every rank together, one per fused shard
        self.output_partition_sizes = self._partition_sizes(output_sizes)
        method = quant_config.get_quant_method(self, prefix) if quant_config else None
        self.quant_method: QuantizationMethod = method or UnquantizedLinearMethod()
        self.quant_method.create_weights(self, self.input_size_per_partition, self.output_partition_sizes,
                                         params_dtype, self.weight_loader)
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(self.output_partition_sizes), dtype=params_dtype),
                                     requires_grad=False)
            self.bias.output_dim = 0
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def _partition_sizes(self, output_sizes: list[int]) -> list[int]:
        return [s // self.tp_size if self.split_output else s for s in output_sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def _rank_slice(self, loaded: torch.Tensor, dim: int, shard_id: str | int | None = None) -> torch.Tensor:
        size = loaded.shape[dim] // self.tp_size
        return loaded.narrow(dim, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | int | None = None) -> None:
        """Copy a checkpoint tensor (or one fused shard of it) into ``param``.

        A fused layer also takes its whole fused tensor (``shard_id`` None: Phi-3 ships
        ``qkv_proj`` and ``gate_up_proj``), split here into its shards by their sizes."""
        output_dim = getattr(param, "output_dim", None)
        if shard_id is None and self.shard_names and output_dim is not None:
            widths = [loaded.shape[output_dim] * size // sum(self.output_sizes) for size in self.output_sizes]
            for name, part in zip(self.shard_names, loaded.split(widths, dim=output_dim)):
                self.weight_loader(param, part, name)
            return
        input_dim = getattr(param, "input_dim", None)
        if self.split_input and input_dim is not None:
            loaded = self._rank_slice(loaded, input_dim)
        if output_dim is None:
            # Not split by output (e.g. GPTQ's g_idx): all fused shards must agree,
            # whichever arrives first (checkpoints list k_proj before q_proj).
            if self.shard_names and getattr(param, "loaded_by_shard", False):
                if not torch.equal(param.data, loaded.to(param.dtype)):
                    raise CheckpointError("fused shards disagree on a tensor they must share")
                return
            default_weight_loader(param.data, loaded)
            param.loaded_by_shard = True
            return
        if self.split_output:
            loaded = self._rank_slice(loaded, output_dim, shard_id)
        target = param.data
        if self.shard_names:
            packed = getattr(param, "packed_factor", 1)
            index = self.shard_names.index(shard_id)
            offset = sum(self.output_partition_sizes[:index]) // packed
            target = target.narrow(output_dim, offset, self.output_partition_sizes[index] // packed)
        default_weight_loader(target, loaded)


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "",
                 params_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(input_size, [output_size], bias, quant_config, prefix, params_dtype)


class RowParallelLinear(ReplicatedLinear):
    """Input dimension split across ranks; the partial outputs are summed by an all-reduce."""

    split_input = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.quant_method.apply(self, x, self.bias)
        out = tensor_model_parallel_all_reduce(self.quant_method.apply(self, x, None))
        return out if self.bias is None else out + self.bias


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of one input in one matmul (gate/up: shards 0, 1)."""

    split_output = True

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "",
                 params_dtype: torch.dtype = torch.float32) -> None:
        self.shard_names = tuple(range(len(output_sizes)))
        super().__init__(input_size, output_sizes, bias, quant_config, prefix, params_dtype)


class QKVParallelLinear(LinearBase):
    """Fused q/k/v projection; shards "q", "k", "v"."""

    split_output = True
    shard_names = ("q", "k", "v")

    def __init__(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, quant_config: QuantizationConfig | None = None, prefix: str = "",
                 params_dtype: torch.dtype = torch.float32) -> None:
        self.head_size, self.total_num_kv_heads = head_size, num_kv_heads
        sizes = [num_heads * head_size, num_kv_heads * head_size, num_kv_heads * head_size]
        super().__init__(hidden_size, sizes, bias, quant_config, prefix, params_dtype)

    @property
    def num_kv_heads_per_rank(self) -> int:
        """KV heads split across ranks; with more ranks than heads each rank holds a replica of one."""
        return max(1, self.total_num_kv_heads // self.tp_size)

    def _partition_sizes(self, output_sizes: list[int]) -> list[int]:
        kv = self.num_kv_heads_per_rank * self.head_size
        return [output_sizes[0] // self.tp_size, kv, kv]

    def _rank_slice(self, loaded: torch.Tensor, dim: int, shard_id: str | int | None = None) -> torch.Tensor:
        if shard_id not in ("k", "v") or self.tp_size == 1:
            return super()._rank_slice(loaded, dim, shard_id)
        per_rank = self.num_kv_heads_per_rank
        if self.tp_size <= self.total_num_kv_heads:
            first_head = self.tp_rank * per_rank
        else:  # tp_size // num_kv_heads ranks share each head
            first_head = self.tp_rank // (self.tp_size // self.total_num_kv_heads)
        width = loaded.shape[dim] // self.total_num_kv_heads  # one head's columns (packed ones too)
        return loaded.narrow(dim, first_head * width, per_rank * width)
