"""Plugin ``gptq``: GPTQ 4/8-bit checkpoints (AutoGPTQ, gptqmodel) and ``folo quantize``.

Loading needs only torch: the CPU int4 kernel and the reference dequantize path
are ours. gptqmodel (the ``gptq`` extra) is used to quantize checkpoints and, on
CUDA, for its kernels.
"""

from folo_core.hookspecs import hookimpl
from folo_plugins.gptq.config import GPTQConfig


@hookimpl
def register_quantizers(register):
    register(GPTQConfig.name, GPTQConfig)
