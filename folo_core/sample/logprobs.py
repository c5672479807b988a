"""Log-probabilities of chosen tokens with their ranks and the top-k alternatives (vLLM's layout).

Shared by samplers (sample log-probs) and the model runner (prompt log-probs).
"""

from __future__ import annotations

import torch


def compute_logprobs(raw_logits: torch.Tensor, sampled: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """(token ids, logprobs, ranks), each ``[rows, 1 + k]``: the chosen token first, then the top ``k``."""
    logprobs = raw_logits.log_softmax(dim=-1)
    sampled_lp = logprobs.gather(1, sampled.unsqueeze(1))
    sampled_rank = (logprobs >= sampled_lp).sum(dim=-1, keepdim=True)
    top_lp, top_ids = logprobs.topk(k, dim=-1) if k else (sampled_lp[:, :0], sampled[:, None][:, :0])
    top_ranks = torch.arange(1, k + 1, device=raw_logits.device).expand(raw_logits.shape[0], k)
    return (torch.cat([sampled.unsqueeze(1), top_ids], 1),
            torch.cat([sampled_lp, top_lp], 1),
            torch.cat([sampled_rank, top_ranks], 1))
