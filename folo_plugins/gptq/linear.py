"""``GPTQLinearMethod``: a linear layer's GPTQ tensors, loaded as stored, then handed to a kernel.

The parameters mirror the checkpoint so the generic ``LinearBase`` loader fuses
q/k/v and gate/up: ``qweight``, ``scales`` and ``qzeros`` are split along the
output (``qzeros`` packed ``pack_factor`` outputs per int32), ``g_idx`` has no
output dimension and must be the same for every fused shard. GPTQ makes it so:
shards of one fused layer read the same input, hence share one Hessian and one
act-order permutation; a checkpoint where they differ fails at load.
"""

from __future__ import annotations

import torch
from torch import nn

from folo_core.logger import init_logger
from folo_core.models import CheckpointError
from folo_core.quantization import QuantizationMethod, WeightLoader
from folo_core.utils import cdiv
from folo_plugins.gptq.scheme import GPTQScheme
from folo_plugins.gptq.kernels import choose_kernel
from folo_plugins.gptq.kernels.base import GPTQWeights
from folo_plugins.gptq.packing import decode_zeros, pack_factor

logger = init_logger(__name__)

CHECKPOINT_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def _param(layer: nn.Module, name: str, tensor: torch.Tensor, weight_loader: WeightLoader, **dims: int) -> None:
    param = nn.Parameter(tensor, requires_grad=False)
    param.weight_loader = weight_loader
    for key, value in dims.items():
        setattr(param, key, value)
    layer.register_parameter(name, param)


class GPTQLinearMethod(QuantizationMethod):
    def __init__(self, scheme: GPTQScheme) -> None:
        self.scheme = scheme
        self.kernel_name: str | None = None
        self.params_dtype = torch.get_default_dtype()

    def create_weights(self, layer, input_size, output_partition_sizes, params_dtype, weight_loader) -> None:
        bits, pf = self.scheme.bits, pack_factor(self.scheme.bits)
        where = getattr(layer, "prefix", type(layer).__name__)
        if input_size % pf or any(size % pf for size in output_partition_sizes):
            raise CheckpointError(f"{where}: GPTQ packs {pf} {bits}-bit values per int32, so input size "
                                  f"{input_size} and output sizes {output_partition_sizes} must be multiples of {pf}")
        output_size = sum(output_partition_sizes)
        # A row-parallel split cuts scales/zeros with the input rows unless one group spans them
        # all or act-order scatters each group's rows (vLLM's rule): then every rank keeps all groups.
        group_dims = {} if self.scheme.group_size == -1 or self.scheme.desc_act else {"input_dim": 0}
        ranks = getattr(layer, "tp_size", 1) if getattr(layer, "split_input", False) else 1
        if ranks > 1 and group_dims and input_size % self.scheme.group_size:
            raise CheckpointError(f"{where}: each of the {ranks} ranks holds {input_size} input rows, "
                                  f"not a multiple of group_size {self.scheme.group_size}")
        group_rows = input_size if group_dims else input_size * ranks
        groups = 1 if self.scheme.group_size == -1 else cdiv(group_rows, self.scheme.group_size)
        _param(layer, "qweight", torch.empty(input_size // pf, output_size, dtype=torch.int32), weight_loader,
               input_dim=0, output_dim=1)
        _param(layer, "qzeros", torch.empty(groups, output_size // pf, dtype=torch.int32), weight_loader,
               output_dim=1, packed_factor=pf, **group_dims)
        _param(layer, "scales", torch.empty(groups, output_size, dtype=torch.float16), weight_loader,
               output_dim=1, **group_dims)
        _param(layer, "g_idx", torch.empty(input_size, dtype=torch.int32), weight_loader, input_dim=0)
        self.params_dtype = params_dtype

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Decode the zero points, check ``g_idx``, and let the chosen kernel repack the layer."""
        groups = layer.scales.shape[0]
        g_idx = layer.g_idx.data
        if getattr(layer.scales, "input_dim", None) is not None and getattr(layer, "split_input", False):
            g_idx = g_idx - layer.tp_rank * groups  # this rank's rows hold groups rank*groups.. of the checkpoint
        if g_idx.numel() and not (0 <= int(g_idx.min()) and int(g_idx.max()) < groups):
            raise CheckpointError(f"{layer.prefix}.g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())}, "
                                  f"but scales has {groups}")
        weights = GPTQWeights(
            qweight=layer.qweight.data,
            zeros=decode_zeros(layer.qzeros.data, self.scheme.bits, self.scheme.checkpoint_format),
            scales=layer.scales.data, g_idx=g_idx, bits=self.scheme.bits)
        kernel = choose_kernel(weights, self.scheme, self.params_dtype)
        for name in CHECKPOINT_TENSORS:
            delattr(layer, name)
        layer.kernel = kernel(weights, self.scheme, self.params_dtype)
        self.kernel_name = kernel.name
        logger.debug("%s: GPTQ kernel %s", layer.prefix, kernel.name)

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        return layer.kernel(x, bias)

    def describe(self) -> str:
        return f"gptq {self.scheme.bits}-bit ({self.kernel_name})"
