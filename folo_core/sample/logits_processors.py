"""Per-request logit edits applied before any sampler (vLLM's built-in logits processors).

``logit_bias`` adds to chosen logits, ``allowed_token_ids`` bans everything else,
``bad_words`` bans the token that would complete a bad word. They run in the model
runner on the rows that sample, ahead of the sampler plugin, so every sampler
honours them and penalties and temperature apply after them.
"""

from __future__ import annotations

import torch

from folo_core.sampling_params import SamplingParams

_MAX_BIAS = 100.0  # OpenAI's range; vLLM clamps likewise


def _completes(output_ids: list[int], sequence: list[int]) -> bool:
    """The next token would complete ``sequence``: the outputs end with all of it but its last token."""
    prefix = len(sequence) - 1
    return prefix == 0 or (len(output_ids) >= prefix and output_ids[-prefix:] == sequence[:-1])


def needs_logits_processing(params: SamplingParams) -> bool:
    return bool(params.logit_bias or params.allowed_token_ids or params._bad_words_token_ids)


def apply_logits_processors(logits: torch.Tensor, rows: list[tuple[int, SamplingParams, list[int]]]) -> None:
    """In place, for each ``(logit row, params, output token ids so far)``."""
    for i, params, output_ids in rows:
        row = logits[i]
        if params.allowed_token_ids:
            allowed = torch.tensor(params.allowed_token_ids, device=row.device)
            kept = row[allowed]
            row.fill_(float("-inf"))
            row[allowed] = kept
        if params.logit_bias:
            ids = torch.tensor(list(params.logit_bias), device=row.device)
            bias = torch.tensor(list(params.logit_bias.values()), dtype=row.dtype, device=row.device)
            row.index_add_(0, ids, bias.clamp(-_MAX_BIAS, _MAX_BIAS))
        banned = [seq[-1] for seq in params._bad_words_token_ids if _completes(output_ids, seq)]
        if banned:
            row[torch.tensor(banned, device=row.device)] = float("-inf")
