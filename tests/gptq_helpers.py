"""GPTQ test helpers: tiny checkpoints quantized by gptqmodel, and transformers references.

The tiny models get a 512-token byte-level BPE trained on the built-in
calibration text, so gptqmodel can calibrate on real text while the vocabulary
stays small enough to compare full log-softmax rows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from folo_core.quantization import QuantizeOptions
from helpers import build_tiny_model

# Both families at dims every kernel takes: Qwen3 q 128 / k,v 32 (QK-norm, untied);
# Qwen2 q 256 / k,v 128 (QKV bias, tied embeddings).
TINY_SOURCES = {
    "qwen3": dict(hidden_size=128, intermediate_size=256),
    "qwen2": dict(hidden_size=256, intermediate_size=512),
}

# Each family covers desc_act false/true, sym true/false and two group sizes.
GPTQ_CHECKPOINTS: dict[str, tuple[str, QuantizeOptions, str]] = {
    "qwen3-g32-act-asym": ("qwen3", QuantizeOptions(group_size=32, desc_act=True, sym=False), "gptq"),
    "qwen3-g64-sym": ("qwen3", QuantizeOptions(group_size=64), "gptq"),
    "qwen2-g128-act-sym-v2": ("qwen2", QuantizeOptions(group_size=128, desc_act=True), "gptq_v2"),
    "qwen2-gall-asym": ("qwen2", QuantizeOptions(group_size=-1, sym=False), "gptq"),
    "qwen3-8bit-g64-asym": ("qwen3", QuantizeOptions(bits=8, group_size=64, sym=False), "gptq"),
}
VOCAB = 512


def save_tiny_tokenizer(out_dir: Path) -> None:
    """A 512-token byte-level BPE trained on the built-in calibration sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from folo_plugins.gptq.calibration import BUILTIN_SAMPLE, split_samples

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(split_samples(BUILTIN_SAMPLE), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(str(out_dir))


def build_tiny_source(kind: str, out_dir: Path) -> Path:
    build_tiny_model(kind, out_dir, vocab_size=VOCAB, **TINY_SOURCES[kind])
    save_tiny_tokenizer(out_dir)
    return out_dir


def quantize(source: Path, out_dir: Path, options: QuantizeOptions, checkpoint_format: str = "gptq") -> Path:
    """Quantize with gptqmodel through ``folo quantize``'s function."""
    from folo_plugins.gptq.quantize import quantize_checkpoint

    # The Python packer is as fast as gptqmodel's C++ one at these sizes and needs no 30 s JIT build.
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    quantize_checkpoint(str(source), str(out_dir), options, checkpoint_format)
    return out_dir


def hf_gptq_model(path: Path, dtype: torch.dtype = torch.float32):
    """transformers + optimum + gptqmodel, with gptqmodel's plain torch kernel (dequantize, matmul)."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    bits = json.loads((path / "config.json").read_text())["quantization_config"]["bits"]
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, device_map="cpu",
        quantization_config=GPTQConfig(bits=bits, backend="gptq_torch")).eval()


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_tensors(path: Path, edit) -> None:
    """Rewrite ``model.safetensors`` with ``edit(tensors)`` applied (a dict it may change in place)."""
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def edit_quantization_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))
