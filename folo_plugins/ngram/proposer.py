"""N-gram prompt lookup: continue the request's own text where its last n tokens occurred before.

For n from ``prompt_lookup_max`` down to ``prompt_lookup_min``, the last n tokens
are compared against every earlier window of n tokens at once (a numpy sliding
window view); at the first (earliest) match the k tokens that followed it become
the drafts. Output that repeats the prompt (summaries, code edits, RAG quotes)
gets long drafts; text that repeats nothing gets none, and costs one vectorised
comparison per n.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from folo_core.spec_decode.proposer import Proposer


def ngram_drafts(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """The ``k`` (or fewer) tokens after the earliest earlier occurrence of the longest suffix."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # Windows that start before the suffix itself and leave at least one token after them.
        windows = sliding_window_view(tokens[:length - 1], n)
        hits = np.flatnonzero((windows == tokens[length - n:]).all(axis=1))
        if len(hits):
            start = int(hits[0]) + n
            return tokens[start:start + k].tolist()
    return []


class NgramProposer(Proposer):
    def propose(self, token_ids: list[np.ndarray]) -> list[list[int]]:
        c = self.config
        return [ngram_drafts(tokens, c.prompt_lookup_min, c.prompt_lookup_max, c.num_speculative_tokens)
                for tokens in token_ids]
