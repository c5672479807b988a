"""Reading HF safetensors checkpoints, single-file or sharded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from folo_core.models import CheckpointError


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
    """Copy a checkpoint tensor into a parameter of exactly its shape."""
    if param.shape != loaded.shape:
        raise CheckpointError(f"shape {tuple(loaded.shape)} does not fit the expected {tuple(param.shape)}")
    param.data.copy_(loaded)


def safetensors_files(model_path: str) -> list[Path]:
    """The checkpoint's shard files, from the index when there is one."""
    root = Path(model_path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        files = sorted({root / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {model_path!r}")
    return files


def iterate_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, one shard open at a time."""
    for file in safetensors_files(model_path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read {file}: {exc}") from None
