"""The quantization contract: how a linear layer's weights are created, loaded and applied.

A ``QuantizationConfig`` (registered by name through ``register_quantizers``) is
built from the checkpoint's ``quantization_config`` and hands each linear layer a
``QuantizationMethod``; layers it does not cover get ``UnquantizedLinearMethod``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from folo_core.registry import SelectionContext

WeightLoader = Callable[..., None]


class QuantizationMethod(ABC):
    """Creates a linear layer's parameters and computes ``y = x W^T + b`` with them."""

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_partition_sizes: list[int],  # one per fused shard (q, k, v / gate, up)
        params_dtype: torch.dtype,
        weight_loader: WeightLoader,
    ) -> None:
        """Register parameters on ``layer``; each carries ``weight_loader`` and its
        ``output_dim`` (and ``packed_factor`` if packed along the output)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights into the kernel's format (once, at load)."""

    def describe(self) -> str:
        return type(self).__name__


class UnquantizedLinearMethod(QuantizationMethod):
    def create_weights(self, layer, input_size, output_partition_sizes, params_dtype, weight_loader) -> None:
        weight = nn.Parameter(torch.empty(sum(output_partition_sizes), input_size, dtype=params_dtype),
                              requires_grad=False)
        weight.output_dim = 0
        weight.weight_loader = weight_loader
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        return torch.nn.functional.linear(x, layer.weight, bias)


class QuantizationConfig(ABC):
    """A quantization scheme read from a checkpoint's ``quantization_config``."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "QuantizationConfig":
        """Build from the checkpoint's ``quantization_config``; errors name the bad field."""

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizationMethod | None:
        """The method for the linear layer at ``prefix``; None leaves it unquantized."""

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        return []

    def hash_key(self) -> str:
        """Identifies the scheme in prefix-cache hashes (different KV for the same tokens)."""
        return repr(sorted(vars(self).items()))
