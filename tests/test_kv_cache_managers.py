"""Block pool and KV-cache managers: properties under random workloads, LRU eviction, prefix hits."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from folo_core.request import Request
from folo_core.sampling_params import SamplingParams
from folo_core.utils import cdiv
from folo_plugins.naive.kv_cache_manager import NaiveKVCacheManager
from folo_plugins.paged.block_hash import hash_block_tokens, root_hash
from folo_plugins.paged.block_pool import BlockPool
from folo_plugins.paged.kv_cache_manager import PagedKVCacheManager


def make_request(req_id: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(req_id, tokens, SamplingParams(), max_tokens=64, cache_salt=salt)


class Simulation:
    """Drives a manager like the scheduler does and records what each block holds."""

    def __init__(self, manager):
        self.m = manager
        self.live: dict[str, Request] = {}
        self.content: dict[int, dict[int, int]] = {}  # block -> offset -> token written

    def admit(self, req: Request, chunk: int) -> bool:
        hits, num_hit = self.m.get_computed_blocks(req)
        bs = self.m.block_size
        for i, block in enumerate(hits):  # a hit must hold exactly this request's tokens
            assert [self.content[block][o] for o in range(bs)] == req.all_token_ids[i * bs:(i + 1) * bs]
        n = min(chunk, req.num_tokens - num_hit)
        if self.m.allocate_slots(req, n, hits) is None:
            return False
        req.num_computed_tokens = num_hit
        self._compute(req, n)
        self.live[req.request_id] = req
        return True

    def step(self, req: Request, chunk: int) -> bool:
        if req.num_computed_tokens == req.num_tokens:
            req.append_output_token_ids([req.num_tokens % 7])  # a "sampled" token
        n = min(chunk, req.num_tokens - req.num_computed_tokens)
        if self.m.allocate_slots(req, n) is None:
            return False
        self._compute(req, n)
        return True

    def _compute(self, req: Request, n: int) -> None:
        blocks = self.m.get_block_ids(req.request_id)
        bs = self.m.block_size
        for pos in range(req.num_computed_tokens, req.num_computed_tokens + n):
            self.content.setdefault(blocks[pos // bs], {})[pos % bs] = req.all_token_ids[pos]
        req.num_computed_tokens += n

    def finish(self, req_id: str) -> None:
        self.m.free(self.live.pop(req_id))

    def preempt(self, req_id: str) -> None:
        req = self.live.pop(req_id)
        self.m.free(req)
        req.num_computed_tokens = 0


def check_invariants(sim: Simulation) -> None:
    m = sim.m
    held = Counter(b for r in sim.live for b in m.get_block_ids(r))
    if isinstance(m, PagedKVCacheManager):
        pool = m.block_pool
        for block in pool.blocks:
            assert block.ref_cnt == held.get(block.block_id, 0) >= 0
            assert (block.block_id in pool.free_queue) == (block.ref_cnt == 0)
        for block_hash, block in pool.cached.items():
            assert block.block_hash == block_hash
    else:
        assert max(held.values(), default=1) == 1  # never shared
        assert not set(held) & set(m.free_block_ids)
        assert len(held) + len(m.free_block_ids) == m.num_blocks
    assert m.num_free_blocks == m.num_blocks - len(held)
    for req_id, req in sim.live.items():
        assert len(m.get_block_ids(req_id)) == cdiv(req.num_computed_tokens, m.block_size)


operations = st.lists(
    st.tuples(st.sampled_from(["add", "step", "finish", "preempt"]), st.integers(0, 10 ** 6)),
    min_size=1, max_size=60)


@pytest.mark.parametrize("kind", ["paged", "paged+caching", "naive"])
@settings(max_examples=60, deadline=None)
@given(ops=operations, block_size=st.sampled_from([1, 2, 4]), num_blocks=st.integers(4, 24))
def test_random_workloads_keep_blocks_consistent(kind, ops, block_size, num_blocks):
    if kind == "naive":
        manager = NaiveKVCacheManager(num_blocks, block_size)
    else:
        manager = PagedKVCacheManager(num_blocks, block_size, enable_caching=kind == "paged+caching")
    sim = Simulation(manager)
    prefixes = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9], [7, 7]]  # shared prefixes make cache hits likely
    counter = 0
    for op, seed in ops:
        if op == "add":
            counter += 1
            tokens = prefixes[seed % 3] + [seed % 11] * (seed % 5)
            sim.admit(make_request(f"r{counter}", tokens), chunk=1 + seed % 4)
        elif sim.live:
            req_id = sorted(sim.live)[seed % len(sim.live)]
            if op == "step":
                if not sim.step(sim.live[req_id], chunk=1 + seed % 3):
                    sim.preempt(req_id)  # the scheduler would preempt on a full cache
            elif op == "finish":
                sim.finish(req_id)
            else:
                sim.preempt(req_id)
        check_invariants(sim)
    for req_id in list(sim.live):
        sim.finish(req_id)
    check_invariants(sim)
    assert manager.num_free_blocks == num_blocks


def test_block_pool_evicts_least_recently_freed_first():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(4)
    for i, block in enumerate(blocks):
        pool.cache_block(block, bytes([i]))
    pool.free_blocks([blocks[2], blocks[0], blocks[3], blocks[1]])
    evicted = pool.get_new_blocks(2)
    assert [b.block_id for b in evicted] == [2, 0]
    assert pool.get_cached_block(bytes([2])) is None and pool.get_cached_block(bytes([3])) is blocks[3]
    assert pool.num_evictions == 2


def test_block_in_use_is_never_evicted():
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, b"a")
    pool.free_blocks([b])
    assert pool.get_new_blocks(1) == [b]
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)  # ``a`` is held: nothing left to evict
    assert pool.get_cached_block(b"a") is a


def test_hit_accounting_is_exact():
    m = PagedKVCacheManager(num_blocks=16, block_size=4, enable_caching=True)
    first = make_request("a", list(range(13)))  # 3 full blocks + 1 token
    assert m.get_computed_blocks(first) == ([], 0)
    m.allocate_slots(first, 13)
    second = make_request("b", list(range(10)) + [99, 98])  # shares 2 full blocks (8 tokens) + 2 tokens
    hits, num_hit = m.get_computed_blocks(second)
    assert num_hit == 8 and hits == m.get_block_ids("a")[:2]
    m.allocate_slots(second, 12 - 8, hits)
    stats = m.prefix_cache_stats
    assert (stats.requests, stats.queries, stats.hits) == (2, 13 + 12, 8)
    assert stats.hit_rate == pytest.approx(8 / 25)


def test_fully_cached_prompt_still_computes_its_last_token():
    m = PagedKVCacheManager(num_blocks=8, block_size=4, enable_caching=True)
    m.allocate_slots(make_request("a", list(range(8))), 8)
    hits, num_hit = m.get_computed_blocks(make_request("b", list(range(8))))
    assert num_hit == 4 and len(hits) == 1  # the second block holds the last token: recomputed


def test_different_cache_salt_never_shares():
    m = PagedKVCacheManager(num_blocks=8, block_size=4, enable_caching=True)
    m.allocate_slots(make_request("a", list(range(9)), salt="tenant-1"), 9)
    assert m.get_computed_blocks(make_request("b", list(range(9)), salt="tenant-2")) == ([], 0)
    assert m.get_computed_blocks(make_request("c", list(range(9)), salt="tenant-1"))[1] == 8


def test_engine_extra_key_changes_every_hash():
    tokens = [1, 2, 3, 4]
    assert hash_block_tokens(root_hash("model-a|bfloat16|", None), tokens) != \
        hash_block_tokens(root_hash("model-a|float32|", None), tokens)


def test_reset_prefix_cache():
    m = PagedKVCacheManager(num_blocks=4, block_size=2, enable_caching=True)
    req = make_request("a", [1, 2, 3])
    m.allocate_slots(req, 3)
    assert not m.reset_prefix_cache()  # blocks in use
    m.free(req)
    assert m.reset_prefix_cache()
    assert m.get_computed_blocks(make_request("b", [1, 2, 3])) == ([], 0)
