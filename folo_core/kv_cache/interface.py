"""The KV-cache manager contract: who owns which KV blocks.

The manager only does bookkeeping over block ids; the model runner owns the
tensors. A block id ``b`` covers cache slots ``b*block_size .. b*block_size+block_size-1``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from folo_core.request import Request


@dataclass
class PrefixCacheStats:
    """Prefix-cache lookups counted in tokens (vLLM's definition of the hit rate)."""

    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found cached
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager(ABC):
    """Hands out KV blocks to requests; ``allocate_slots`` returning None means "full"."""

    supports_prefix_caching: ClassVar[bool] = False

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False,
                 extra_hash_key: str = "", sliding_window: int | None = None) -> None:
        if enable_caching and not self.supports_prefix_caching:
            raise ValueError(f"{type(self).__name__} does not support prefix caching")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.extra_hash_key = extra_hash_key  # anything that changes KV for the same tokens
        # Set when every layer of the model attends a window of this many tokens: a block whose
        # positions all lie before ``num_computed_tokens - sliding_window + 1`` is seen by no
        # later query of its request, and a manager may give it back (vLLM's sliding-window
        # manager). None: every token's KV stays needed.
        self.sliding_window = sliding_window
        self.prefix_cache_stats = PrefixCacheStats()

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Cached blocks of the request's longest cached prefix and their token count.

        Never the whole prompt: the last token is always computed so it yields logits.
        A request with ``prompt_logprobs`` gets no hits: its prompt's logprobs come from
        running the prompt.
        """
        return [], 0

    @abstractmethod
    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[int] | None = None,
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens after ``num_computed_tokens``.

        ``new_computed_blocks`` are prefix-cache hits from ``get_computed_blocks``
        (first schedule only); they count as already computed. Returns the newly
        allocated block ids, or None (and allocates nothing) if there are too few free blocks.
        With ``sliding_window`` set, a manager may first give back the request's blocks that
        fell out of the window; ``get_block_ids`` keeps their places in the table (attention
        never reads them).
        """

    @abstractmethod
    def free(self, request: Request) -> None:
        """Release the request's blocks (finished, aborted or preempted)."""

    @abstractmethod
    def trim(self, request: Request) -> None:
        """Give back the blocks past the request's ``num_computed_tokens`` (they held slots of
        draft tokens the target model rejected; no prefix-cache hash covers them)."""

    @abstractmethod
    def get_block_ids(self, request_id: str) -> list[int]:
        ...

    @property
    @abstractmethod
    def num_free_blocks(self) -> int:
        ...

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by requests (0.0 .. 1.0)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def reset_prefix_cache(self) -> bool:
        """Drop every cached-but-unused block; False if blocks are still in use."""
        return True
