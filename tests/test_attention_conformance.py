"""The conformance kit: the built-in backends pass it, broken backends fail it, and it
runs in a third-party test suite from a two-line subclass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from folo_core.attention.backend import AttentionCapabilities, AttentionMetadataBuilder
from folo_core.testing import AttentionBackendConformance, ConformanceCase, check_conformance, conformance_cases
from folo_core.testing.attention_conformance import skip_reason
from folo_core.worker.flat_batch import build_flat_batch
from folo_plugins.naive.attention import NaiveAttentionBackend, NaiveAttentionImpl
from folo_plugins.paged.attention import PagedSDPABackend, PagedSDPAMetadataBuilder

pytest_plugins = ["pytester"]


class TestNaiveConformance(AttentionBackendConformance):
    backend = NaiveAttentionBackend


class TestPagedConformance(AttentionBackendConformance):
    backend = PagedSDPABackend


def test_cases_cover_scenarios_gqa_block_sizes_and_dtypes():
    cases = conformance_cases(PagedSDPABackend)
    assert {c.scenario for c in cases} == {"prefill", "decode", "mixed", "chunked_prefill"}
    assert {c.gqa_ratio for c in cases} == {1, 2, 4, 8}
    assert {c.block_size for c in cases} == {1, 16}
    assert {c.dtype for c in cases} == {torch.float32, torch.bfloat16}


def test_flat_batch_matches_hand_computed_metadata():
    # Request A (row 2): 5 cached tokens + 3 new; request B (row 0): fresh 2-token prompt. Block size 4.
    table = np.array([[7, 0, 0], [0, 0, 0], [3, 9, 0]], dtype=np.int32)
    flat = build_flat_batch(np.array([5, 0]), np.array([3, 2]), table, np.array([2, 0]), 4, torch.device("cpu"))
    md = flat.attn_metadata
    assert flat.positions.tolist() == [5, 6, 7, 0, 1]
    assert flat.token_req.tolist() == [0, 0, 0, 1, 1]
    assert md.query_start_loc.tolist() == [0, 3, 5]
    assert md.seq_lens.tolist() == [8, 2]
    assert md.block_table.tolist() == [[3, 9], [7, 0]]
    assert md.slot_mapping.tolist() == [9 * 4 + 1, 9 * 4 + 2, 9 * 4 + 3, 7 * 4, 7 * 4 + 1]
    assert (md.num_actual_tokens, md.max_query_len, md.max_seq_len) == (5, 3, 8)


# -- the kit catches broken backends -------------------------------------------------


def _case(scenario: str, gqa_ratio: int = 2) -> ConformanceCase:
    return ConformanceCase(scenario, gqa_ratio, 16, torch.float32, 32)


class _DefaultScaleImpl(NaiveAttentionImpl):
    """Ignores the model's softmax scale."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, **options) -> None:
        super().__init__(num_heads, head_size, head_size ** -0.5, num_kv_heads, **options)


class _DefaultScaleBackend(NaiveAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return _DefaultScaleImpl


class _UnmaskedDecodeBuilder(PagedSDPAMetadataBuilder):
    """Lets decode rows attend every slot of their blocks, including garbage past the sequence."""

    use_cpu_kernel = False  # the SDPA buckets, whose masks this breaks

    def build(self, common):
        md = super().build(common)
        for bucket in md.decode_buckets:
            bucket.mask = torch.ones_like(bucket.mask)
        return md


class _UnmaskedDecodeBackend(PagedSDPABackend):
    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return _UnmaskedDecodeBuilder


class _SwappedViewsBackend(NaiveAttentionBackend):
    """Computes correctly but misdescribes its layout: its key view is the value half."""

    @staticmethod
    def split_kv_cache(kv_cache):
        return kv_cache[1], kv_cache[0]


class _ModuloGQAImpl(NaiveAttentionImpl):
    """Maps query head h to KV head h % num_kv_heads instead of h // group."""

    def forward(self, query, key, value, kv_cache, attn_metadata):
        order = torch.arange(self.num_heads).view(-1, self.num_kv_heads).t().flatten()
        inverse = torch.argsort(order)
        return super().forward(query[:, order], key, value, kv_cache, attn_metadata)[:, inverse]


class _ModuloGQABackend(NaiveAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return _ModuloGQAImpl


@pytest.mark.parametrize("backend, case, match", [
    (_DefaultScaleBackend, _case("prefill"), r"step 0 layer 0, request \d"),
    (_UnmaskedDecodeBackend, _case("decode"), r"step 1 layer 0, request \d"),
    (_SwappedViewsBackend, _case("prefill"), "keys do not read back at their slots through split_kv_cache"),
    (_ModuloGQABackend, _case("mixed", gqa_ratio=4), r"step 0 layer 0, request \d"),
])
def test_kit_rejects_broken_backend(backend, case, match):
    with pytest.raises(AssertionError, match=match):
        check_conformance(backend, case)


def test_modulo_gqa_bug_is_invisible_without_grouping():
    check_conformance(_ModuloGQABackend, _case("mixed", gqa_ratio=1))


# -- as a third-party test suite uses it ----------------------------------------------


def test_third_party_subclass_runs_declared_cases_and_skips_the_rest(pytester):
    pytester.makepyfile(test_float32_only="""
        import dataclasses, torch
        from folo_core.testing import AttentionBackendConformance
        from folo_plugins.paged.attention import PagedSDPABackend

        class Float32Only(PagedSDPABackend):
            name = "float32_only"
            capabilities = dataclasses.replace(PagedSDPABackend.capabilities, dtypes=(torch.float32,),
                                               block_size_multiple=8)

        class TestFloat32Only(AttentionBackendConformance):
            backend = Float32Only
    """)
    result = pytester.runpytest_inprocess("-v", "-rs", "-k", "gqa2")
    result.assert_outcomes(passed=24, skipped=24)  # 4 scenarios x 2 block sizes: full, windowed, soft-capped
    result.stdout.fnmatch_lines(["*test_conformance?prefill-gqa2-bs8-float32? PASSED*",
                                 "*test_conformance?prefill-gqa2-bs16-float32? PASSED*",
                                 "*test_conformance?decode-gqa2-bs8-sw7-float32? PASSED*",
                                 "*test_conformance?mixed-gqa2-bs8-cap1.5-float32? PASSED*"])
    result.stdout.fnmatch_lines(["*float32_only cannot run *bfloat16 on cpu: dtype torch.bfloat16 not in*"])


def test_undeclared_sliding_window_is_skipped_with_the_reason():
    """A backend that does not declare windows (the default) never gets a windowed model."""
    class NoWindow(PagedSDPABackend):
        name = "no_window"
        capabilities = AttentionCapabilities()

    windowed = dataclasses.replace(_case("decode"), sliding_window=7)
    assert skip_reason(NoWindow, _case("decode"), "cpu") is None
    assert "sliding-window attention is not supported" in skip_reason(NoWindow, windowed, "cpu")


class _FullAttentionImpl(NaiveAttentionImpl):
    """Ignores the layer's window: attends the whole (still cached) context."""

    def forward(self, query, key, value, kv_cache, attn_metadata):
        window, self.sliding_window = self.sliding_window, None
        try:
            return super().forward(query, key, value, kv_cache, attn_metadata)
        finally:
            self.sliding_window = window


class _FullAttentionBackend(NaiveAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return _FullAttentionImpl


def test_kit_rejects_a_backend_that_ignores_the_window():
    """It attends too far back (and, decoding, reads the blocks given away before the window)."""
    with pytest.raises(AssertionError, match=r"step \d layer 0, request \d"):
        check_conformance(_FullAttentionBackend, dataclasses.replace(_case("decode"), sliding_window=7))


def test_undeclared_soft_cap_is_skipped_with_the_reason():
    class NoCap(PagedSDPABackend):
        name = "no_cap"
        capabilities = AttentionCapabilities(sliding_window=True)

    capped = dataclasses.replace(_case("decode"), logits_soft_cap=1.5)
    assert skip_reason(NoCap, _case("decode"), "cpu") is None
    assert "attention logit soft-capping is not supported" in skip_reason(NoCap, capped, "cpu")


class _UncappedImpl(NaiveAttentionImpl):
    """Ignores the layer's logit soft-cap."""

    def __init__(self, *args, logits_soft_cap: float | None = None, **options) -> None:
        super().__init__(*args, **options)


class _UncappedBackend(NaiveAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return _UncappedImpl


@pytest.mark.parametrize("scenario", ["prefill", "decode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kit_rejects_a_backend_that_ignores_the_soft_cap(scenario, dtype):
    case = dataclasses.replace(_case(scenario), dtype=dtype, logits_soft_cap=1.5)
    check_conformance(NaiveAttentionBackend, case)
    with pytest.raises(AssertionError, match=r"step \d layer \d, request \d"):
        check_conformance(_UncappedBackend, case)


def test_undeclared_gqa_is_skipped_with_the_reason():
    class NoGQA(PagedSDPABackend):
        name = "no_gqa"
        capabilities = AttentionCapabilities(gqa=False)

    assert skip_reason(NoGQA, _case("decode", gqa_ratio=1), "cpu") is None
    assert "grouped-query attention is not supported" in skip_reason(NoGQA, _case("decode", gqa_ratio=4), "cpu")
