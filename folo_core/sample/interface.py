"""The sampler contract: logits of the rows that sample -> one token each (+ logprobs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from folo_core.sample.metadata import SamplingMetadata


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # int64 [B]
    # Column 0 is the sampled token; columns 1.. the top ``max_num_logprobs`` tokens.
    logprob_token_ids: torch.Tensor | None = None  # int64 [B, 1 + k]
    logprobs: torch.Tensor | None = None  # float32 [B, 1 + k]
    ranks: torch.Tensor | None = None  # int64 [B, 1 + k]


class Sampler(ABC):
    """Turns a step's logits into tokens; implementations are registered by name."""

    @abstractmethod
    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """``logits``: float32 [B, vocab] of the rows that sample this step."""

    def target_probs(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """The distribution each row would sample from, float32 [B, vocab]: one-hot at the
        chosen token for greedy rows. Speculative decoding verifies drafts against it (each
        row is one draft position, its metadata counting the drafts before it as outputs);
        a sampler that leaves it out cannot run with ``speculative_config``."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify draft tokens")

    @classmethod
    def supports_speculative_decoding(cls) -> bool:
        return cls.target_probs is not Sampler.target_probs
