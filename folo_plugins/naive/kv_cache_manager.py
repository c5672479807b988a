"""The reference KV-cache manager: a free list of blocks, no sharing, no caching."""

from __future__ import annotations

from folo_core.kv_cache.interface import KVCacheManager
from folo_core.request import Request
from folo_core.utils import cdiv


class NaiveKVCacheManager(KVCacheManager):
    """Keeps every block of a request until it finishes, even past a sliding window."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False,
                 extra_hash_key: str = "", sliding_window: int | None = None) -> None:
        super().__init__(num_blocks, block_size, enable_caching, extra_hash_key, sliding_window)
        self.free_block_ids = list(range(num_blocks))
        self.req_to_block_ids: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[int] | None = None) -> list[int] | None:
        if new_computed_blocks:
            raise ValueError("the naive KV-cache manager has no prefix cache to hit")
        owned = self.req_to_block_ids.setdefault(request.request_id, [])
        needed = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size) - len(owned)
        if needed > len(self.free_block_ids):
            return None
        new = [self.free_block_ids.pop() for _ in range(max(needed, 0))]
        owned.extend(new)
        return new

    def free(self, request: Request) -> None:
        self.free_block_ids.extend(self.req_to_block_ids.pop(request.request_id, []))

    def trim(self, request: Request) -> None:
        owned = self.req_to_block_ids.get(request.request_id, [])
        keep = cdiv(request.num_computed_tokens, self.block_size)
        self.free_block_ids.extend(owned[keep:])
        del owned[keep:]

    def get_block_ids(self, request_id: str) -> list[int]:
        return list(self.req_to_block_ids.get(request_id, []))
