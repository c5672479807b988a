"""The model contract: what a registered model loader gets and must return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from folo_core.attention.backend import AttentionBackend
from folo_core.quantization import QuantizationConfig


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model; names the tensor or file."""


@dataclass
class ModelLoadContext:
    model_path: str
    hf_config: Any  # transformers.PretrainedConfig
    dtype: torch.dtype
    device: torch.device
    attn_backend: type[AttentionBackend]
    quant_config: QuantizationConfig | None = None


class CausalLM(Protocol):
    """What the model runner calls; registered loaders return an ``nn.Module`` like this."""

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat batch [T] -> hidden states [T, hidden]."""

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states [N, hidden] -> logits [N, vocab]."""


class ModelLoader(Protocol):
    def __call__(self, ctx: ModelLoadContext) -> CausalLM:
        ...
