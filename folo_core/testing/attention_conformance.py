"""Attention backend conformance: does a backend compute what the reference computes?

A case runs a few engine steps of random ragged requests through the backend,
exactly as the model runner would (metadata from ``build_flat_batch``, built
once per step and shared by two layers, each with its own shuffled paged cache
whose unwritten slots hold NaN, so reading one shows), and checks every output
against the reference math (``folo_core.attention.ops.causal_attention``, in
float32, on each request's keys and values so far). Queries, keys and values
arrive as strided views of one fused tensor, as the decoder passes them, and the
output must be a tensor of its own. After the last step it reads the cache back through
the backend's ``split_kv_cache`` at every slot any step wrote.

Cases cover pure prefill, pure decode, mixed batches and chunked prefill
continuing from cached blocks; GQA ratios 1/2/4/8; the smallest block sizes the
backend declares; float32 and bfloat16; sliding-window attention on the
first layer only (the second stays full, as Gemma alternates them), where after
every step the blocks wholly before each request's window are overwritten with
NaN, as if the KV manager had given them to another request; and attention logit
soft-capping on both layers (Gemma 2), with a cap small enough that ignoring it
fails. Cases the backend's capability declaration excludes are skipped, with the
reason.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from folo_core.attention.backend import AttentionBackend
from folo_core.attention.ops import causal_attention
from folo_core.registry import SelectionContext
from folo_core.utils import cdiv
from folo_core.worker.flat_batch import build_flat_batch

SCENARIOS = ("prefill", "decode", "mixed", "chunked_prefill")
GQA_RATIOS = (1, 2, 4, 8)
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)
# (atol, rtol) against a float32 reference on inputs already rounded to the dtype.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
}
NUM_KV_HEADS = 2
NUM_LAYERS = 2
SLIDING_WINDOW = 7  # shorter than the prompts and not a multiple of any block size
LOGITS_SOFT_CAP = 1.5  # the cases' scores have a standard deviation of about 0.7: the cap bends them


@dataclass(frozen=True)
class ConformanceCase:
    scenario: str
    gqa_ratio: int
    block_size: int
    dtype: torch.dtype
    head_size: int
    sliding_window: int | None = None  # the first layer's window; the second is always full
    logits_soft_cap: float | None = None  # every layer's

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if layer == 0 else None

    @property
    def num_heads(self) -> int:
        return NUM_KV_HEADS * self.gqa_ratio

    @property
    def seed(self) -> int:
        return zlib.crc32(str(self).encode())

    @property
    def scale(self) -> float:
        # Not head_size ** -0.5, so a backend that ignores ``scale`` fails.
        return 0.7 * self.head_size ** -0.5

    def __str__(self) -> str:
        window = f"-sw{self.sliding_window}" if self.sliding_window else ""
        cap = f"-cap{self.logits_soft_cap}" if self.logits_soft_cap else ""
        return (f"{self.scenario}-gqa{self.gqa_ratio}-bs{self.block_size}{window}{cap}-"
                f"{str(self.dtype).removeprefix('torch.')}")

    def selection_context(self, device: str) -> SelectionContext:
        continues_cached = self.scenario in ("mixed", "chunked_prefill")
        return SelectionContext(device=device, dtype=self.dtype, head_size=self.head_size,
                                num_heads=self.num_heads, num_kv_heads=NUM_KV_HEADS, block_size=self.block_size,
                                options={"enable_chunked_prefill": continues_cached,
                                         "sliding_window": self.sliding_window is not None,
                                         "logits_soft_cap": self.logits_soft_cap is not None})


def declared_block_sizes(backend: type[AttentionBackend]) -> tuple[int, ...]:
    """The smallest block size the backend allows, and a larger one (16, or twice the smallest)."""
    multiple = backend.capabilities.block_size_multiple
    return (multiple, max(2 * multiple, cdiv(16, multiple) * multiple))


def conformance_cases(backend: type[AttentionBackend],
                      dtypes: tuple[torch.dtype, ...] = DEFAULT_DTYPES) -> list[ConformanceCase]:
    """Every scenario x GQA ratio x declared block size x dtype, and every scenario x block
    size x dtype with a sliding window and with a logit soft-cap (GQA 2)."""
    head_sizes = backend.capabilities.head_sizes
    head_size = 32 if head_sizes is None or 32 in head_sizes else min(head_sizes)
    full = [ConformanceCase(s, g, b, d, head_size)
            for d in dtypes for b in declared_block_sizes(backend) for g in GQA_RATIOS for s in SCENARIOS]
    windowed = [ConformanceCase(s, 2, b, d, head_size, SLIDING_WINDOW)
                for d in dtypes for b in declared_block_sizes(backend) for s in SCENARIOS]
    capped = [ConformanceCase(s, 2, b, d, head_size, logits_soft_cap=LOGITS_SOFT_CAP)
              for d in dtypes for b in declared_block_sizes(backend) for s in SCENARIOS]
    return full + windowed + capped


def skip_reason(backend: type[AttentionBackend], case: ConformanceCase, device: str) -> str | None:
    """Why the backend cannot run ``case`` on ``device`` by its own account, or None."""
    reasons = backend.check_eligibility(case.selection_context(device))
    return f"{backend.name} cannot run {case} on {device}: {'; '.join(reasons)}" if reasons else None


def _schedule(scenario: str, rng: np.random.Generator, block_size: int) -> list[list[int]]:
    """New tokens per request per step (0: not scheduled that step).

    The first request spans more than a block, so every case crosses a block
    boundary mid-chunk; the others are short and random, so chunks start and
    end mid-block.
    """
    long = max(40, block_size + 7)

    def short() -> int:
        return int(rng.integers(1, 41))

    if scenario == "prefill":
        return [[long]] + [[short()] for _ in range(4)]
    if scenario == "decode":
        return [[long, 1, 1]] + [[short(), 1, 1] for _ in range(4)]
    if scenario == "chunked_prefill":
        return [[long // 2, long - long // 2, 3]] + [[short(), short(), short()] for _ in range(3)]
    # mixed: step 1 fills caches; step 2 mixes decodes, continued chunks and new prompts.
    return [[long, 1, 1], [short(), 1, 1], [short(), short(), 1], [0, long, 1], [0, 1, 1]]


@dataclass
class _Workload:
    """One case's requests: new tokens per step, their blocks, and every token's q/k/v per layer."""

    plan: list[list[int]]  # [request][step]
    orders: list[list[int]]  # [step]: the order requests appear in that step's batch
    block_table: np.ndarray  # int32 [num_requests, max_blocks + 1]
    num_blocks: int
    qkv: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]  # [layer][request]


def _make_workload(case: ConformanceCase) -> _Workload:
    rng = np.random.default_rng(case.seed)
    gen = torch.Generator().manual_seed(case.seed)
    plan = _schedule(case.scenario, rng, case.block_size)
    orders = [rng.permutation(len(plan)).tolist() for _ in plan[0]]
    totals = [sum(steps) for steps in plan]
    # Blocks are handed out in shuffled order; unused table entries point at valid
    # blocks of NaN, which a backend must never let into an output.
    blocks_per_req = [cdiv(n, case.block_size) for n in totals]
    num_blocks = sum(blocks_per_req) + 2
    block_ids = rng.permutation(num_blocks).astype(np.int32)
    block_table = rng.integers(0, num_blocks, (len(plan), max(blocks_per_req) + 1)).astype(np.int32)
    for req, first in enumerate(np.cumsum([0, *blocks_per_req[:-1]])):
        block_table[req, :blocks_per_req[req]] = block_ids[first:first + blocks_per_req[req]]
    qkv = [[tuple(torch.randn(n, heads, case.head_size, generator=gen).to(case.dtype)
                  for heads in (case.num_heads, NUM_KV_HEADS, NUM_KV_HEADS)) for n in totals]
           for _ in range(NUM_LAYERS)]
    return _Workload(plan, orders, block_table, num_blocks, qkv)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add fan-out cost (10x and more on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_single_threaded()
@torch.inference_mode()
def check_conformance(backend: type[AttentionBackend], case: ConformanceCase, device: str = "cpu") -> None:
    """Run ``case`` through ``backend``; raise AssertionError naming the step and request that differ."""
    work = _make_workload(case)
    dev = torch.device(device)
    kvh, d = NUM_KV_HEADS, case.head_size
    shape = backend.get_kv_cache_shape(work.num_blocks, case.block_size, kvh, d)
    # NaN everywhere nothing was written: stale blocks of another request (whose model
    # may have overflowed) must never leak into this request's output, even masked.
    caches = [torch.full(shape, float("nan"), dtype=case.dtype, device=dev) for _ in range(NUM_LAYERS)]
    impls = [backend.get_impl_cls()(case.num_heads, d, case.scale, kvh, sliding_window=case.layer_window(layer),
                                    logits_soft_cap=case.logits_soft_cap) for layer in range(NUM_LAYERS)]
    builder = backend.get_builder_cls()(backend, dev)

    done = [0] * len(work.plan)
    dead_slots: set[int] = set()  # of the first layer, given away before its window
    written: list[tuple[torch.Tensor, int, int, int]] = []  # (slots, request, first token, end token)
    for step, order in enumerate(work.orders):
        reqs = [r for r in order if work.plan[r][step]]
        spans = [(r, done[r], done[r] + work.plan[r][step]) for r in reqs]
        flat = build_flat_batch(np.array([s for _, s, _ in spans]), np.array([e - s for _, s, e in spans]),
                                work.block_table, np.array(reqs), case.block_size, dev)
        metadata = builder.build(flat.attn_metadata)  # once per step, shared by every layer
        slots = flat.attn_metadata.slot_mapping.cpu().split([e - s for _, s, e in spans])
        written += [(slot, r, s, e) for slot, (r, s, e) in zip(slots, spans)]
        for layer in range(NUM_LAYERS):
            # q, k and v as the decoder hands them over: strided views of one fused tensor.
            fused = torch.cat([torch.cat([t[s:e] for t in work.qkv[layer][r]], dim=1) for r, s, e in spans]).to(dev)
            q, k, v = fused.split([case.num_heads, kvh, kvh], dim=1)
            out = impls[layer].forward(q, k, v, caches[layer], metadata)
            assert out.untyped_storage().data_ptr() != fused.untyped_storage().data_ptr(), (
                f"{backend.name} [{case}]: the output is a view of the inputs; return a new tensor")
            _compare(out, case, layer, work.qkv[layer], spans, f"{backend.name} [{case}] step {step} layer {layer}")
        for r, _, end in spans:
            done[r] = end
        if case.sliding_window is not None:
            dead_slots = _give_away_blocks_before_window(backend, caches[0], work.block_table, done, case)
    for layer in range(NUM_LAYERS):
        _check_kv_layout(backend, caches[layer], written, work.qkv[layer], f"{backend.name} [{case}] layer {layer}",
                         dead_slots if layer == 0 else set())


def _give_away_blocks_before_window(backend: type[AttentionBackend], kv_cache: torch.Tensor,
                                    block_table: np.ndarray, done: list[int], case: ConformanceCase) -> set[int]:
    """NaN into the first layer's blocks that no later query of their request sees (all their
    positions before ``done - window + 1``), as a sliding-window KV manager frees them.
    Returns their slots, which the layout check then skips."""
    key_cache, value_cache = backend.split_kv_cache(kv_cache)
    dead: set[int] = set()
    for r, n in enumerate(done):
        for block in block_table[r, :max(0, n - case.sliding_window + 1) // case.block_size].tolist():
            key_cache[block].fill_(float("nan"))
            value_cache[block].fill_(float("nan"))
            dead.update(range(block * case.block_size, (block + 1) * case.block_size))
    return dead


def _compare(out: torch.Tensor, case: ConformanceCase, layer: int,
             layer_qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             spans: list[tuple[int, int, int]], where: str) -> None:
    """Each request's rows of ``out`` against the reference on all its keys so far."""
    num_tokens = sum(e - s for _, s, e in spans)
    expected_shape = (num_tokens, case.num_heads, case.head_size)
    assert tuple(out.shape) == expected_shape and out.dtype == case.dtype, (
        f"{where}: output {tuple(out.shape)} {out.dtype}, expected {expected_shape} {case.dtype}")
    atol, rtol = TOLERANCES[case.dtype]
    rows = out.float().cpu().split([e - s for _, s, e in spans])
    for got, (r, start, end) in zip(rows, spans):
        q, k, v = (t.float() for t in layer_qkv[r])
        expected = causal_attention(q[start:end], k[:end], v[:end], case.scale, case.layer_window(layer),
                                    logits_soft_cap=case.logits_soft_cap)
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{where}, request {r} (tokens {start}..{end - 1}): {m}")


def _check_kv_layout(backend: type[AttentionBackend], kv_cache: torch.Tensor,
                     written: list[tuple[torch.Tensor, int, int, int]],
                     layer_qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], where: str,
                     dead_slots: set[int]) -> None:
    """Every token written reads back, bit for bit, at its slot through ``split_kv_cache``
    (but those in ``dead_slots``, overwritten on purpose)."""
    key_cache, value_cache = backend.split_kv_cache(kv_cache)
    num_blocks, block_size, kvh, d = key_cache.shape
    assert value_cache.shape == key_cache.shape, f"{where}: key/value views differ in shape"
    slots = torch.cat([s for s, *_ in written])
    live = ~torch.isin(slots, torch.tensor(sorted(dead_slots), dtype=slots.dtype))
    slots = slots[live]
    for name, cache, index in (("key", key_cache, 1), ("value", value_cache, 2)):
        stored = cache.reshape(num_blocks * block_size, kvh, d)[slots.to(cache.device)].cpu()
        expected = torch.cat([layer_qkv[req][index][start:end] for _, req, start, end in written])[live]
        bad = (stored != expected).flatten(1).any(dim=1).nonzero().flatten().tolist()
        assert not bad, (f"{where}: {len(bad)} of {len(slots)} written {name}s do not read back at their "
                         f"slots through split_kv_cache (first: slot {int(slots[bad[0]])})")

class AttentionBackendConformance:
    """Subclass in a test module with ``backend = MyBackend``; pytest runs one test per case.

    ``device`` and ``dtypes`` may be overridden (e.g. ``"cuda"`` with float16);
    cases the backend does not declare show up as skipped with the reason.
    """

    backend: ClassVar[type[AttentionBackend]]
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = DEFAULT_DTYPES

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "conformance_case" not in metafunc.fixturenames:
            return
        params = []
        for case in conformance_cases(self.backend, self.dtypes):
            reason = skip_reason(self.backend, case, self.device)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(case, id=str(case), marks=marks))
        metafunc.parametrize("conformance_case", params)

    def test_conformance(self, conformance_case: ConformanceCase) -> None:
        check_conformance(self.backend, conformance_case, self.device)
