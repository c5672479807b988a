"""Rejection sampling of draft tokens (Leviathan et al. 2023; vLLM's ``RejectionSampler``).

A draft d at a position is kept with probability min(1, p(d) / q(d)), where p is
the target model's distribution there after every sampling parameter and q the
proposer's. Proposers without a distribution (n-gram lookup) propose d with
certainty, q(d) = 1, so d is kept with probability p(d). At the first rejected
position the token is drawn from p with d removed (the normalised residual
max(0, p - q)); if every draft is kept, a bonus token is drawn from p at the
position after the last one. The emitted tokens are distributed exactly as
sampling from p one token at a time. Greedy rows arrive as one-hot p at the
argmax, so the same rule keeps a draft iff it is the argmax.
"""

from __future__ import annotations

import torch

from folo_core.sample.random_sample import random_sample


def rejection_sample(target_probs: torch.Tensor, draft_token_ids: list[list[int]],
                     generators: dict[int, torch.Generator]) -> list[list[int]]:
    """Emitted tokens per request: its kept drafts, then one drawn token.

    ``target_probs``: float32 [sum(len(d) + 1), vocab], for request i the rows of
    its draft positions then the bonus position, requests in order. Seeded
    requests (``generators``, by request index) draw every uniform from their own
    generator, one per draft then one for the drawn token, so they stay reproducible.
    """
    device = target_probs.device
    counts = torch.tensor([len(d) + 1 for d in draft_token_ids], device=device)
    starts = counts.cumsum(0) - counts
    num_reqs, width = len(draft_token_ids), int(counts.max()) - 1
    drafts = torch.zeros(num_reqs, width, dtype=torch.long, device=device)
    for i, d in enumerate(draft_token_ids):
        drafts[i, :len(d)] = torch.tensor(d, dtype=torch.long)
    positions = torch.arange(width, device=device)
    valid = positions < (counts - 1).unsqueeze(1)
    rows = (starts.unsqueeze(1) + positions).clamp(max=target_probs.shape[0] - 1)
    p_draft = target_probs[rows, drafts]
    u = torch.rand(num_reqs, width, device=device)
    for i, generator in generators.items():
        u[i, :len(draft_token_ids[i])] = torch.rand(len(draft_token_ids[i]), generator=generator, device=device)
    kept = (u < p_draft) & valid
    num_kept = kept.int().cumprod(dim=1).sum(dim=1)  # the leading run of kept drafts
    final = target_probs[starts + num_kept].clone()
    rejected = torch.nonzero(num_kept < counts - 1).flatten()
    final[rejected, drafts[rejected, num_kept[rejected]]] = 0.0  # the residual: p without d
    drawn = random_sample(final, generators).tolist()
    return [d[:k] + [t] for d, k, t in zip(draft_token_ids, num_kept.tolist(), drawn)]
