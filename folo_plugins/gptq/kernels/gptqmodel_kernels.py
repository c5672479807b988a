"""On CUDA: gptqmodel's own kernels (Marlin, ExLlama, Triton, ...) when it is installed.

gptqmodel picks the fastest of its kernels that accepts the layer; we hand it
the checkpoint tensors with the zero points already decoded to its internal v2
form (``qzero_format(2)``), exactly what its own loader does after converting a
v1 checkpoint, and let its ``post_init`` repack them. Folo's CI has no GPU: this
path is exercised on CPU with gptqmodel's torch backend, never on CUDA there.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels.base import GPTQKernel, GPTQWeights
from folo_plugins.gptq.packing import encode_zeros


def _select(scheme: GPTQScheme, device: torch.device, backend: Any = None) -> type:
    from gptqmodel.utils.backend import BACKEND
    from gptqmodel.utils.importer import select_quant_linear

    return select_quant_linear(
        bits=scheme.bits, group_size=scheme.group_size, desc_act=scheme.desc_act, sym=scheme.sym,
        device=device, backend=backend or BACKEND.AUTO, format=scheme.checkpoint_format, pack=False,
        pack_dtype=torch.int32)


class GPTQModelKernel(GPTQKernel):
    name = "gptqmodel"

    @classmethod
    def config_reasons(cls, scheme: GPTQScheme, device: torch.device, dtype: torch.dtype) -> list[str]:
        if device.type != "cuda":
            return ["needs a CUDA device (Folo's own kernels serve the CPU)"]
        if importlib.util.find_spec("gptqmodel") is None:
            return ["gptqmodel is not installed (pip install 'folovllm[gptq]')"]
        try:
            _select(scheme, device)
        except Exception as exc:  # gptqmodel raises ValueError / NotImplementedError / import errors
            return [f"gptqmodel has no kernel for it ({exc})"]
        return []

    @classmethod
    def layer_reasons(cls, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> list[str]:
        ok, err = _select(scheme, weights.qweight.device).validate(
            bits=scheme.bits, group_size=scheme.group_size, desc_act=scheme.desc_act, sym=scheme.sym,
            in_features=weights.input_size, out_features=weights.output_size, pack_dtype=torch.int32,
            dtype=dtype, device=weights.qweight.device)
        return [] if ok else [f"gptqmodel's kernel refuses the layer ({err})"]

    def __init__(self, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype, backend: Any = None) -> None:
        super().__init__()
        device = weights.qweight.device
        linear_cls = _select(scheme, device, backend)
        module = linear_cls(
            bits=scheme.bits, group_size=scheme.group_size, desc_act=scheme.desc_act, sym=scheme.sym,
            in_features=weights.input_size, out_features=weights.output_size, bias=False,
            pack_dtype=torch.int32, backend=backend or linear_cls.SUPPORTS_BACKENDS[0], adapter=None,
            register_buffers=True, dtype=dtype)
        module.qweight.copy_(weights.qweight)
        module.qzeros.copy_(encode_zeros(weights.zeros, scheme.bits, "gptq_v2"))
        module.scales.copy_(weights.scales)
        module.g_idx.copy_(weights.g_idx)
        module.qzero_format(2)
        self.module = module.to(device)
        self.module.post_init()

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = self.module(x)
        return y if bias is None else y + bias
