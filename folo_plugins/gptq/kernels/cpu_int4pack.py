"""4-bit GPTQ on CPU through torch's int4 kernels (``aten._weight_int4pack_mm_for_cpu``).

The kernel computes ``W[n, k] = (code - 8) * sz[k // G, n, 0] + sz[k // G, n, 1]``
with ``G`` in {32, 64, 128, 256}, ``K % G == 0`` and ``N % 16 == 0``; GPTQ's
``W = s * (q - z)`` is that with ``sz = (s, (8 - z) * s)``. At load the layer is
repacked once (the packed layout depends on the CPU's ISA, so it is never
saved):

- act-order (``desc_act``): input rows are sorted by group once and ``x``'s
  columns are permuted to match on every call;
- group sizes the kernel lacks (``group_size=-1``, 512, ...) are split into a
  kernel group size that divides them, repeating the scales;
- a short last group (``K % group_size != 0``) needs no padding when the split
  size also divides ``K``; otherwise ``K`` is padded and ``x`` with zero columns.

Only bfloat16 is fast (fp16/fp32 run a scalar loop), so the kernel takes bf16
activations only. It beats a dense bf16 matmul at small batches (decode) and is
about twice slower from 16 rows up; docs/quantization.md has the numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels.base import GPTQKernel, GPTQWeights, frozen
from folo_plugins.gptq.packing import unpack_rows

KERNEL_GROUP_SIZES = (256, 128, 64, 32)


def _sorted_groups(weights: GPTQWeights) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the permutation sorting input rows by group, None if they are sorted; rows per group)."""
    groups = weights.g_idx.long()
    perm = torch.argsort(groups, stable=True) if bool((groups[1:] < groups[:-1]).any()) else None
    return perm, torch.bincount(groups, minlength=weights.num_groups)


def _group_plan(counts: torch.Tensor, input_size: int) -> tuple[int, int] | str:
    """(kernel group size, padded K) for these group sizes, or why there is none."""
    group = int(counts[0])
    if bool((counts[:-1] != group).any()) or not 0 < int(counts[-1]) <= group:
        return "groups are not all the same size"
    divisors = [g for g in KERNEL_GROUP_SIZES if group % g == 0]
    if not divisors:
        return f"group size {group} is not a multiple of 32"
    unpadded = [g for g in divisors if input_size % g == 0]
    if unpadded:
        return unpadded[0], input_size
    return divisors[0], len(counts) * group


class CPUInt4PackKernel(GPTQKernel):
    name = "cpu_int4pack"

    @classmethod
    def config_reasons(cls, scheme: GPTQScheme, device: torch.device, dtype: torch.dtype) -> list[str]:
        reasons = []
        if device.type != "cpu":
            reasons.append("needs a CPU device")
        if scheme.bits != 4:
            reasons.append(f"needs bits=4 (checkpoint has {scheme.bits})")
        if dtype != torch.bfloat16:
            reasons.append(f"needs bfloat16 activations (torch's {dtype} int4 CPU kernel is a slow scalar loop)")
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            reasons.append(f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu")
        return reasons

    @classmethod
    def layer_reasons(cls, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> list[str]:
        reasons = []
        if weights.output_size % 16:
            reasons.append(f"needs output size % 16 == 0 (has {weights.output_size})")
        plan = _group_plan(_sorted_groups(weights)[1], weights.input_size)
        if isinstance(plan, str):
            reasons.append(plan)
        return reasons

    def __init__(self, weights: GPTQWeights, scheme: GPTQScheme, dtype: torch.dtype) -> None:
        super().__init__()
        perm, counts = _sorted_groups(weights)
        plan = _group_plan(counts, weights.input_size)
        assert not isinstance(plan, str), plan
        self.group_size, padded = plan
        self.input_size, self.pad = weights.input_size, padded - weights.input_size
        codes = unpack_rows(weights.qweight, weights.bits)[: self.input_size]
        if perm is not None:
            codes = codes[perm]
        if self.pad:
            codes = F.pad(codes, (0, 0, 0, self.pad), value=8)
            counts = torch.full_like(counts, padded // len(counts))
        repeats = counts // self.group_size
        scales = weights.scales.float().repeat_interleave(repeats, 0)
        zeros = weights.zeros.float().repeat_interleave(repeats, 0)
        self.perm = None if perm is None else frozen(perm)
        self.packed = frozen(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.T.contiguous(), 1))
        self.scales_and_zeros = frozen(torch.stack([scales, (8 - zeros) * scales], -1).to(dtype).contiguous())
        self.output_size = weights.output_size

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, self.input_size)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if self.pad:
            x2 = F.pad(x2, (0, self.pad))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size,
                                                       self.scales_and_zeros)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], self.output_size)
