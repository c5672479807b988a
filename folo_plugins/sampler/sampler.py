"""The default sampler, vectorised over the batch with per-row parameters.

Order (vLLM v1): raw logprobs -> min_tokens ban -> penalties -> greedy argmax, or
temperature -> min-p -> top-k/top-p -> inverse-CDF sampling in which seeded rows
draw from their own generator.
"""

from __future__ import annotations

import torch

from folo_core.kernels.argmax import argmax
from folo_core.sample.interface import Sampler, SamplerOutput
from folo_core.sample.logprobs import compute_logprobs
from folo_core.sample.metadata import SamplingMetadata
from folo_core.sample.random_sample import random_sample

_EPS = 1e-5


def apply_min_tokens(logits: torch.Tensor, banned: dict[int, list[int]]) -> torch.Tensor:
    for row, token_ids in banned.items():
        logits[row, token_ids] = float("-inf")
    return logits


def _token_mask(token_lists: list[list[int]], vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row counts and presence of token ids over the vocabulary."""
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.float32, device=device)
    width = max((len(t) for t in token_lists), default=0)
    if width:
        ids = torch.full((len(token_lists), width), vocab_size, dtype=torch.long)
        for i, tokens in enumerate(token_lists):
            ids[i, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        counts.scatter_add_(1, ids.to(device), torch.ones(ids.shape, device=device))
    counts = counts[:, :vocab_size]  # the last column collected the padding
    return counts, counts > 0


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Repetition (prompt + output, HF/vLLM), then frequency and presence (output only)."""
    vocab = logits.shape[1]
    output_counts, output_mask = _token_mask(md.output_token_ids, vocab, logits.device)
    _, prompt_mask = _token_mask(md.prompt_token_ids, vocab, logits.device)
    rep = md.repetition_penalties.unsqueeze(1)
    seen = prompt_mask | output_mask
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - md.frequency_penalties.unsqueeze(1) * output_counts
    logits = logits - md.presence_penalties.unsqueeze(1) * output_mask.float()
    return logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k_only(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Top-k without a full-vocabulary sort: ``topk`` of the largest k asked for finds each
    row's k-th value (ties at it kept, as in ``apply_top_k_top_p``); rows with k = 0 keep all."""
    vocab = logits.shape[1]
    enabled = top_k > 0
    k = torch.where(enabled, top_k, torch.ones_like(top_k)).clamp(max=vocab)
    top_values = logits.topk(int(k.max()), dim=-1).values
    kth = top_values.gather(1, (k - 1).unsqueeze(1))
    kth = kth.masked_fill(~enabled.unsqueeze(1), float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


_TOP_P_CANDIDATES = 1024  # tokens looked at before falling back to a full sort


def apply_top_p_partial(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor | None:
    """Top-p from the ``_TOP_P_CANDIDATES`` most likely tokens, without sorting the vocabulary.

    A token stays iff the mass of the tokens more likely than it is below p. When the
    candidates of every row already hold mass p, no token outside them can stay, so
    the answer is exact; otherwise (a flat distribution) returns None for the full sort.
    """
    k = min(_TOP_P_CANDIDATES, logits.shape[1])
    values, _ = logits.topk(k, dim=-1)
    probs = (values - logits.logsumexp(dim=-1, keepdim=True)).exp()
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely candidates
    p = top_p.unsqueeze(1)
    if bool((before[:, -1:] + probs[:, -1:] < p).any()):
        return None
    keep = before < p
    keep[:, 0] = True  # the most likely token always stays
    threshold = values.masked_fill(~keep, float("inf")).min(dim=-1, keepdim=True).values
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask everything outside the top-k and the top-p nucleus (ties at the k-th value kept).

    Neither needs a full-vocabulary sort in the usual case: top-k finds each row's k-th
    value with ``topk``, then top-p looks only at the most likely candidates.
    """
    if top_k is not None:
        logits = apply_top_k_only(logits, top_k)
        if top_p is None:
            return logits
    nucleus = apply_top_p_partial(logits, top_p)
    return nucleus if nucleus is not None else apply_top_p_sorted(logits, top_p)


def apply_top_p_sorted(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p over the whole sorted vocabulary (for distributions too flat for the candidates)."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    outside = cumulative <= (1 - top_p.unsqueeze(1))
    outside[:, -1] = False  # the most likely token always stays
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


class DefaultSampler(Sampler):
    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        raw_logits = logits if md.max_num_logprobs is not None else None
        logits = self._constrained(logits, md)
        greedy = None if md.all_random else argmax(logits)
        if md.all_greedy:
            sampled = greedy
        else:
            sampled = random_sample(self._random_probs(logits, md), md.generators)
            if greedy is not None:
                sampled = torch.where(md.temperature < _EPS, greedy, sampled)
        out = SamplerOutput(sampled_token_ids=sampled)
        if raw_logits is not None:
            out.logprob_token_ids, out.logprobs, out.ranks = compute_logprobs(
                raw_logits, sampled, md.max_num_logprobs)
        return out

    def target_probs(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        logits = self._constrained(logits, md)
        greedy = torch.nn.functional.one_hot(argmax(logits), logits.shape[1]).float()
        if md.all_greedy:
            return greedy
        probs = self._random_probs(logits, md)
        return probs if md.all_random else torch.where((md.temperature < _EPS).unsqueeze(1), greedy, probs)

    @staticmethod
    def _constrained(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """The min_tokens ban and the penalties, which greedy rows obey too."""
        if md.min_tokens_banned:
            logits = apply_min_tokens(logits.clone(), md.min_tokens_banned)
        if not md.no_penalties:
            logits = apply_penalties(logits, md)
        return logits

    @staticmethod
    def _random_probs(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """Temperature, min-p, top-k/top-p, softmax (greedy rows get temperature 1; unused)."""
        temperature = torch.where(md.temperature < _EPS, torch.ones_like(md.temperature), md.temperature)
        logits = logits / temperature.unsqueeze(1)
        if md.min_p is not None:
            logits = apply_min_p(logits, md.min_p)
        if md.top_k is not None or md.top_p is not None:
            logits = apply_top_k_top_p(logits, md.top_k, md.top_p)
        return logits.softmax(dim=-1)
