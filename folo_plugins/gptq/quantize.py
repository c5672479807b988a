"""``folo quantize``: GPTQ-quantize a local HF checkpoint with gptqmodel, on CPU or GPU.

gptqmodel writes the standard GPTQ layout (v1 ``checkpoint_format: gptq``) with
``quantization_config`` in ``config.json``, the tokenizer and the generation
config, so the result loads in Folo and in transformers (with optimum +
gptqmodel) alike. Tensors left unquantized are written in bfloat16.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from folo_core.logger import init_logger
from folo_core.quantization import QuantizeOptions
from folo_core.registry import PluginSelectionError
from folo_plugins.gptq.calibration import calibration_samples
from folo_plugins.gptq.scheme import scheme_problem

logger = init_logger(__name__)


def _check(options: QuantizeOptions) -> None:
    problem = scheme_problem(options.bits, options.group_size)
    if problem:
        raise ValueError(problem)
    if options.num_samples < 1:
        raise ValueError(f"num_samples={options.num_samples} must be at least 1")


@contextmanager
def _run_log_elsewhere() -> Iterator[None]:
    """gptqmodel 7.6 writes a log per run into ``./logs`` of whatever the current directory is
    (no setting moves it); send it to a temporary directory instead. ``quant_log.csv`` in the
    output directory keeps the per-layer results."""
    from gptqmodel.looper import loop_processor

    previous = loop_processor._PROJECT_LOG_DIR
    with tempfile.TemporaryDirectory(prefix="gptqmodel-logs-") as logs:
        loop_processor._PROJECT_LOG_DIR = Path(logs)
        try:
            yield
        finally:
            loop_processor._PROJECT_LOG_DIR = previous


def quantize_checkpoint(model_path: str, output_path: str, options: QuantizeOptions,
                        checkpoint_format: str = "gptq") -> None:
    """Quantize ``model_path`` into ``output_path``. ``checkpoint_format="gptq_v2"`` stores zero
    points as they are; only gptqmodel-era readers (Folo included) understand it."""
    _check(options)
    samples = calibration_samples(options.calibration_file, options.num_samples)
    # Read when gptqmodel is imported: quantize layers on every core.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    try:
        import torch
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as exc:
        raise PluginSelectionError(f"folo quantize needs gptqmodel ({exc}): pip install 'folovllm[gptq]'") from None

    # Activation-group-aware ordering (on by default) needs groups and excludes act-order.
    extra = {"act_group_aware": False} if options.group_size == -1 or options.desc_act else {}
    config = QuantizeConfig(bits=options.bits, group_size=options.group_size, desc_act=options.desc_act,
                            sym=options.sym, format=checkpoint_format, **extra)
    start = time.perf_counter()
    model = GPTQModel.load(model_path, config, dtype=torch.bfloat16)
    with _run_log_elsewhere():
        # gptqmodel silently drops samples under 10 tokens by default; short ones still help.
        model.quantize(samples, batch_size=1, calibration_data_min_length=1)
    model.save(output_path)
    logger.info("quantized %s to %s (%d-bit, group size %d%s%s) on %d calibration samples in %.0f s",
                model_path, output_path, options.bits, options.group_size, ", desc_act" if options.desc_act else "",
                "" if options.sym else ", asymmetric", len(samples), time.perf_counter() - start)
