"""Inverse-CDF sampling shared by the default sampler and the rejection sampler."""

from __future__ import annotations

import torch


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (unnormalised is fine), from the row's generator if seeded.

    One uniform draw per row (not one per vocabulary entry, as vLLM's exponential
    race takes) keeps sampling cheap on CPU. Tokens of probability zero are never
    picked: the search finds the first token whose cumulative mass reaches u > 0.
    """
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device)
    for row, generator in generators.items():
        u[row] = torch.rand(1, generator=generator, device=probs.device)
    u = (u * cdf[:, -1:]).clamp_min_(torch.finfo(cdf.dtype).tiny)
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[1] - 1)
