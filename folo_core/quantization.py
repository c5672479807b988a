"""The quantization contract: how a linear layer's weights are created, loaded and applied.

A ``QuantizationConfig`` (registered by name through ``register_quantizers``) is
built from the checkpoint's ``quantization_config`` and hands each linear layer a
``QuantizationMethod``; layers it does not cover get ``UnquantizedLinearMethod``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from folo_core.kernels import cpu_linear
from folo_core.registry import PluginSelectionError, SelectionContext

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
        weight.output_dim, weight.input_dim = 0, 1
        weight.weight_loader = weight_loader
        layer.register_parameter("weight", weight)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """On CPU, pack the weight for its kernel (``folo_core.kernels.cpu_linear``)."""
        if cpu_linear.can_pack(layer.weight):
            layer.out_features = layer.weight.shape[0]
            layer.linear_kernel, packed = cpu_linear.pack(layer.weight.data)
            layer.weight = nn.Parameter(packed, requires_grad=False)

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        kernel = getattr(layer, "linear_kernel", None)
        if kernel is None:
            return torch.nn.functional.linear(x, layer.weight, bias)
        if kernel == cpu_linear.ONEDNN and torch.compiler.is_compiling():
            # The graph names the layer (``ModelRunner`` sets ``linear_name``) and never touches
            # the opaque weight, which a graph compiled ahead of time cannot take as an input.
            return cpu_linear.mkldnn_linear(x, layer.linear_name, bias, layer.out_features)
        return cpu_linear.packed_linear(x, kernel, layer.weight, bias, layer.out_features)


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

    @classmethod
    def get_config_filenames(cls) -> list[str]:
        """Files beside ``config.json`` holding the scheme when it has no ``quantization_config``
        (AutoGPTQ's ``quantize_config.json``); finding one selects this quantizer."""
        return []

    def kernel_candidates(self, ctx: SelectionContext) -> list[tuple[str, list[str]]]:
        """The kernels this scheme's linears may run on, in preference order, each with the
        reasons it cannot run in ``ctx`` (shown by ``folo plugins --explain``)."""
        return []

    @classmethod
    def quantize_checkpoint(cls, model_path: str, output_path: str, options: QuantizeOptions) -> None:
        """Write a quantized copy of an HF checkpoint (``folo quantize``), if the scheme can."""
        raise PluginSelectionError(f"quantizer {cls.name!r} cannot quantize checkpoints")


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``folo quantize`` asks of a quantizer; a scheme rejects what it cannot do."""

    bits: int = 4
    group_size: int = 128  # -1: one group over the whole input
    desc_act: bool = False
    sym: bool = True
    calibration_file: str | None = None  # None: the quantizer's built-in sample
    num_samples: int = 128


@dataclass(frozen=True)
class WeightMemory:
    """What the loaded model's tensors take, and how much quantization saved."""

    total_bytes: int  # every parameter and buffer, tied tensors once
    quantized_bytes: int  # the weights of quantized linear layers, as the kernels keep them
    quantized_dense_bytes: int  # what those weights would take unquantized in the model dtype

    @property
    def quantized_ratio(self) -> float | None:
        return self.quantized_bytes / self.quantized_dense_bytes if self.quantized_dense_bytes else None


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose quantization method is not the unquantized one."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "quant_method", None), QuantizationMethod)
            and not isinstance(m.quant_method, UnquantizedLinearMethod)]


def weight_memory(model: nn.Module, dtype: torch.dtype) -> WeightMemory:
    """Measure a loaded model; linear layers expose ``input_size_per_partition`` and
    ``output_partition_sizes`` (the sizes ``create_weights`` received)."""
    def nbytes(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
        tensors = [t for n, t in [*module.named_parameters(), *module.named_buffers()] if n not in skip]
        return sum(t.numel() * t.element_size() for t in tensors)

    itemsize = torch.empty((), dtype=dtype).element_size()
    quantized = dense = 0
    for module in quantized_layers(model):
        quantized += nbytes(module, skip=("bias",))
        dense += module.input_size_per_partition * sum(module.output_partition_sizes) * itemsize
    return WeightMemory(nbytes(model), quantized, dense)
