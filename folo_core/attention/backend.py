"""The attention backend contract.

A backend declares what it can run (``capabilities``), the KV-cache tensor layout
it needs, a metadata builder run once per engine step, and the per-layer impl.
``auto`` selection and ``folo plugins --explain`` read ``check_eligibility``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from folo_core.registry import SelectionContext


@dataclass(frozen=True)
class AttentionCapabilities:
    """What a backend supports; ``auto`` never picks it outside these."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
    head_sizes: tuple[int, ...] | None = None  # None: any head size
    block_size_multiple: int = 1
    chunked_prefill: bool = True
    prefix_caching: bool = True
    gqa: bool = True
    sliding_window: bool = False  # honours ``AttentionImpl.sliding_window`` (Mistral, Gemma 2/3, Phi-3)
    logits_soft_cap: bool = False  # honours ``AttentionImpl.logits_soft_cap`` (Gemma 2)

    def mismatches(self, ctx: SelectionContext) -> list[str]:
        reasons = []
        if ctx.device not in self.devices:
            reasons.append(f"device {ctx.device!r} not in {list(self.devices)}")
        if ctx.dtype is not None and ctx.dtype not in self.dtypes:
            reasons.append(f"dtype {ctx.dtype} not in {[str(d) for d in self.dtypes]}")
        if ctx.head_size is not None and self.head_sizes is not None and ctx.head_size not in self.head_sizes:
            reasons.append(f"head size {ctx.head_size} not in {list(self.head_sizes)}")
        if ctx.block_size is not None and ctx.block_size % self.block_size_multiple:
            reasons.append(f"block size {ctx.block_size} is not a multiple of {self.block_size_multiple}")
        if not self.gqa and ctx.num_heads and ctx.num_kv_heads and ctx.num_heads != ctx.num_kv_heads:
            reasons.append("grouped-query attention is not supported")
        if not self.sliding_window and ctx.options.get("sliding_window"):
            reasons.append("sliding-window attention is not supported (the model has windowed layers)")
        if not self.logits_soft_cap and ctx.options.get("logits_soft_cap"):
            reasons.append("attention logit soft-capping is not supported (the model sets attn_logit_softcapping)")
        if not self.chunked_prefill and ctx.options.get("enable_chunked_prefill"):
            reasons.append("chunked prefill is not supported (set enable_chunked_prefill=False)")
        if not self.prefix_caching and ctx.options.get("enable_prefix_caching"):
            reasons.append("cached prefixes are not supported (set enable_prefix_caching=False)")
        return reasons


@dataclass
class CommonAttentionMetadata:
    """One step's flat, unpadded batch as every backend sees it.

    Tokens of request ``i`` are ``query_start_loc[i]:query_start_loc[i+1]`` of the
    flat batch; they sit at the end of its ``seq_lens[i]`` tokens of context, whose
    KV lives in the blocks of ``block_table[i]``. ``*_cpu`` copies serve host-side
    loops without device syncs.
    """

    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]
    query_start_loc_cpu: torch.Tensor
    seq_lens: torch.Tensor  # int32 [num_reqs]
    seq_lens_cpu: torch.Tensor
    num_computed_tokens_cpu: torch.Tensor  # int32 [num_reqs]: context already cached
    block_table: torch.Tensor  # int32 [num_reqs, max_blocks_per_req]
    slot_mapping: torch.Tensor  # int64 [num_tokens]: cache slot of each new token
    num_reqs: int
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    block_size: int


class AttentionMetadataBuilder:
    """Turns the common metadata into a backend's own, once per step (not per layer)."""

    def __init__(self, backend: type["AttentionBackend"], device: torch.device, enforce_eager: bool = False) -> None:
        self.backend = backend
        self.device = device
        self.enforce_eager = enforce_eager  # no torch.compile'd kernels (``ModelConfig.enforce_eager``)

    def build(self, common: CommonAttentionMetadata) -> Any:
        return common


class AttentionImpl(ABC):
    """Per-layer attention: store the new keys/values, attend over the cache.

    With ``sliding_window`` W, the query at position ``i`` sees only the keys at
    ``i - W < j <= i``, and must not read the cache before that: a KV manager may
    already have given those blocks to another request.

    With ``logits_soft_cap`` C, each scaled score ``s`` becomes ``C * tanh(s / C)`` before
    the softmax (Gemma 2's ``attn_logit_softcapping``).
    """

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 sliding_window: int | None = None, logits_soft_cap: float | None = None) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be at least 1, got {sliding_window}")
        if logits_soft_cap is not None and not logits_soft_cap > 0:
            raise ValueError(f"logits_soft_cap must be positive, got {logits_soft_cap}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,
        kv_cache: torch.Tensor,  # the backend's layout, see get_kv_cache_shape
        attn_metadata: Any,  # what the backend's builder returned
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
        ...


class AttentionBackend(ABC):
    """A named attention implementation with its capabilities and KV layout."""

    name: ClassVar[str]
    capabilities: ClassVar[AttentionCapabilities] = AttentionCapabilities()

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int) -> tuple[int, ...]:
        """Shape of one layer's KV cache tensor.

        The default, keys then values each ``[num_blocks, block_size, kv_heads, head]``,
        is what flash-attn's paged kernels read; a backend with another layout
        overrides this and ``split_kv_cache`` together.
        """
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    @abstractmethod
    def get_impl_cls() -> type[AttentionImpl]:
        ...

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return AttentionMetadataBuilder

    @staticmethod
    def split_kv_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value views, each ``[num_blocks, block_size, num_kv_heads, head_size]``.

        The default splits the default ``get_kv_cache_shape`` layout. The
        conformance kit reads the cache back through this to check the layout
        round trip.
        """
        return kv_cache.unbind(0)

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """Packages or hardware the backend needs and this machine lacks."""
        return []

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        return cls.missing_requirements() + cls.capabilities.mismatches(ctx)
