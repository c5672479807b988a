"""Per-step, per-row sampling parameters as tensors (built by the input batch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingMetadata:
    """Row ``i`` describes the request whose logits are row ``i`` of the step's logits.

    Optional tensors are None when no row uses the feature, so the sampler skips it.
    """

    temperature: torch.Tensor  # float32 [B]; 0 marks a greedy row
    all_greedy: bool
    all_random: bool
    top_p: torch.Tensor | None  # float32 [B]
    top_k: torch.Tensor | None  # int64 [B]; 0 = disabled
    min_p: torch.Tensor | None  # float32 [B]
    generators: dict[int, torch.Generator]  # seeded rows only
    max_num_logprobs: int | None
    # Penalties (None unless some row uses one).
    presence_penalties: torch.Tensor | None = None  # float32 [B]
    frequency_penalties: torch.Tensor | None = None
    repetition_penalties: torch.Tensor | None = None
    prompt_token_ids: list[list[int]] = field(default_factory=list)
    output_token_ids: list[list[int]] = field(default_factory=list)
    # row -> token ids banned until the row reaches ``min_tokens`` outputs.
    min_tokens_banned: dict[int, list[int]] = field(default_factory=dict)

    @property
    def no_penalties(self) -> bool:
        return self.repetition_penalties is None
