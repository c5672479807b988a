"""What every GPTQ linear kernel gets (``GPTQWeights``) and must provide (``GPTQKernel``).

A kernel is chosen per layer after loading (vLLM's ``MPLinearKernel`` pattern):
``config_reasons`` rules it out for a scheme, device and activation dtype (what
``folo plugins --explain`` shows before loading), ``layer_reasons`` for one
layer's loaded tensors (shapes, group layout). The first kernel with no reasons
builds its own tensors from the checkpoint's and owns them as parameters, so
the model's parameters are what it really keeps in memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from folo_plugins.gptq.scheme import GPTQScheme


@dataclass
class GPTQWeights:
    """One linear layer's checkpoint tensors, zero points already decoded."""

    qweight: torch.Tensor  # int32 [K / pack_factor, N]
    zeros: torch.Tensor  # int32 [groups, N], the real zero points
    scales: torch.Tensor  # [groups, N], fp16 as stored
    g_idx: torch.Tensor  # int32 [K], the group of each input row
    bits: int

    @property
    def input_size(self) -> int:
        return self.g_idx.numel()

    @property
    def output_size(self) -> int:
        return self.scales.shape[1]

    @property
    def num_groups(self) -> int:
        return self.scales.shape[0]


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class GPTQKernel(nn.Module, ABC):
    """``y = x @ W + bias`` for one GPTQ layer, in the kernel's own weight format.

    Built as ``Kernel(weights, scheme, dtype)`` (``dtype``: the activations').
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def config_reasons(cls, scheme: GPTQScheme, device: torch.device, dtype: torch.dtype) -> list[str]:
        """Why this kernel cannot run ``scheme`` on ``device`` with ``dtype`` activations."""

    @classmethod
    def layer_reasons(cls, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> list[str]:
        """Why this kernel cannot take this layer (shapes, group layout)."""
        return []

    @abstractmethod
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ...
