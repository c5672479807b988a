"""The proposer contract: draft tokens for the next step, verified by the target model.

A proposer sees each decoding request's tokens so far (prompt and outputs, as a
numpy array) and returns up to ``num_speculative_tokens`` drafts per request;
the runner feeds them after the request's last token in the next step and the
rejection sampler keeps the prefix the target model agrees with. A proposer
without its own model (n-gram lookup) needs nothing else; one with a draft
model would load it in ``__init__``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from folo_core.config import SpeculativeConfig


class Proposer(ABC):
    """Registered by name; ``speculative_config["method"]`` picks one."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    @abstractmethod
    def propose(self, token_ids: list[np.ndarray]) -> list[list[int]]:
        """Drafts for each request (at most ``config.num_speculative_tokens``; may be empty)."""
