"""Paged KV-cache manager with prefix caching (vLLM v1's ``KVCacheManager``), which gives back
blocks that fell out of a sliding window (vLLM's ``SlidingWindowManager``)."""

from __future__ import annotations

from typing import ClassVar

from folo_core.kv_cache.interface import KVCacheManager
from folo_core.request import Request
from folo_core.utils import cdiv
from folo_plugins.paged.block_hash import extend_block_hashes, root_hash
from folo_plugins.paged.block_pool import BlockPool, KVCacheBlock

# Holds the place of a block given back past the sliding window: the block table keeps its
# position (its id is never read) and nothing frees it twice.
NULL_BLOCK = KVCacheBlock(block_id=0, ref_cnt=-1)


class PagedKVCacheManager(KVCacheManager):
    """Blocks on demand from a shared pool; full blocks are hashed and shared when cached."""

    supports_prefix_caching: ClassVar[bool] = True

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False,
                 extra_hash_key: str = "", sliding_window: int | None = None) -> None:
        super().__init__(num_blocks, block_size, enable_caching, extra_hash_key, sliding_window)
        self.block_pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_to_block_hashes: dict[str, list[bytes]] = {}
        self.num_cached_block: dict[str, int] = {}  # blocks of the request already hashed

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    def _block_hashes(self, request: Request) -> list[bytes]:
        hashes = self.req_to_block_hashes.setdefault(request.request_id, [])
        extend_block_hashes(hashes, request.all_token_ids, self.block_size,
                            root_hash(self.extra_hash_key, request.cache_salt))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        hashes = self._block_hashes(request)
        # Leave at least the last token to compute, so the step yields logits.
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for block_hash in hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block.block_id)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[int] | None = None) -> list[int] | None:
        computed = [self.block_pool.blocks[i] for i in (new_computed_blocks or [])]
        req_id = request.request_id
        first_allocation = req_id not in self.req_to_blocks
        blocks = self.req_to_blocks.get(req_id, [])
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        num_tokens_after = num_computed + num_new_tokens
        self._free_blocks_before_window(blocks, num_computed)
        num_new = cdiv(num_tokens_after, self.block_size) - len(blocks) - len(computed)
        # Touching a free cached hit takes it out of the free queue too.
        reusable = sum(1 for b in computed if b.ref_cnt == 0)
        if num_new > self.block_pool.num_free_blocks - reusable:
            return None
        self.block_pool.touch(computed)
        new_blocks = self.block_pool.get_new_blocks(max(num_new, 0))
        blocks = self.req_to_blocks.setdefault(req_id, blocks)
        blocks.extend(computed)
        blocks.extend(new_blocks)
        self._free_blocks_before_window(blocks, num_computed)  # cache hits already out of the window
        if self.enable_caching:
            if first_allocation:
                self.prefix_cache_stats.requests += 1
                self.prefix_cache_stats.queries += request.num_tokens
                self.prefix_cache_stats.hits += len(computed) * self.block_size
            self._cache_full_blocks(request, blocks, num_tokens_after)
        return [b.block_id for b in computed + new_blocks]

    def _free_blocks_before_window(self, blocks: list[KVCacheBlock], num_computed: int) -> None:
        """Give back the leading blocks no query at ``num_computed`` or later sees. They keep their
        hashes, so a later request with the same prefix may still hit them."""
        if self.sliding_window is None:
            return
        num_dead = min(len(blocks), max(0, num_computed - self.sliding_window + 1) // self.block_size)
        dead = [b for b in blocks[:num_dead] if b is not NULL_BLOCK]
        blocks[:num_dead] = [NULL_BLOCK] * num_dead
        self.block_pool.free_blocks(list(reversed(dead)))

    def _cache_full_blocks(self, request: Request, blocks: list[KVCacheBlock], num_tokens: int) -> None:
        """Index blocks that this step fills completely (their tokens are all known)."""
        req_id = request.request_id
        start = self.num_cached_block.get(req_id, 0)
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        if num_full <= start:
            return
        hashes = self._block_hashes(request)
        for i in range(start, num_full):
            self.block_pool.cache_block(blocks[i], hashes[i])
        self.num_cached_block[req_id] = num_full

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.block_pool.free_blocks([b for b in reversed(blocks) if b is not NULL_BLOCK])
        self.num_cached_block.pop(request.request_id, None)
        self.req_to_block_hashes.pop(request.request_id, None)

    def trim(self, request: Request) -> None:
        blocks = self.req_to_blocks.get(request.request_id, [])
        keep = cdiv(request.num_computed_tokens, self.block_size)
        excess = blocks[keep:]
        del blocks[keep:]
        self.block_pool.free_blocks([b for b in reversed(excess) if b is not NULL_BLOCK])

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()
