"""Token bitmasks: one int32 word per 32 tokens, bit set = token allowed (llguidance's and xgrammar's layout)."""

from __future__ import annotations

import torch

_BITS = torch.arange(32, dtype=torch.int32)


def allocate_token_bitmask(num_rows: int, vocab_size: int) -> torch.Tensor:
    """All tokens allowed: rows without a grammar leave theirs like this."""
    return torch.full((num_rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> None:
    """Set ``logits[rows[i], t] = -inf`` for every token ``t`` that ``bitmask[i]`` does not allow."""
    vocab = logits.shape[-1]
    allowed = ((bitmask.unsqueeze(-1) >> _BITS.to(bitmask.device)) & 1).flatten(1)[:, :vocab].bool()
    if allowed.shape[1] < vocab:  # the grammar's vocabulary is smaller than the logits: the rest is banned
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    logits[rows] = logits[rows].masked_fill(~allowed.to(logits.device), float("-inf"))
