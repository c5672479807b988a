"""The reference kernel: rebuild ``W`` from the codes on every call, then one matmul.

It follows the checkpoint's definition literally (``g_idx`` gather, no
reordering), runs on any device, dtype, bit width and shape, and keeps only the
packed codes in memory. It is what every faster kernel is tested against, and
the fallback where none of them applies; it is slow (a full dequantization per
call).
"""

from __future__ import annotations

import torch

from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels.base import GPTQKernel, GPTQWeights, frozen
from folo_plugins.gptq.packing import dequantize


class DequantKernel(GPTQKernel):
    name = "dequant"

    @classmethod
    def config_reasons(cls, scheme: GPTQScheme, device: torch.device, dtype: torch.dtype) -> list[str]:
        return []

    def __init__(self, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> None:
        super().__init__()
        self.bits = weights.bits
        self.qweight = frozen(weights.qweight)
        self.zeros = frozen(weights.zeros.to(torch.uint8))  # codes fit a byte for bits <= 8
        self.scales = frozen(weights.scales)
        self.g_idx = frozen(weights.g_idx)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        weight = dequantize(self.qweight, self.zeros, self.scales, self.g_idx, self.bits).to(x.dtype)
        y = torch.matmul(x, weight)
        return y if bias is None else y + bias
