"""Paged decode attention fused into one loop by torch inductor.

Eager decode attention must first gather each request's blocks into a padded
tensor (``index_select``) and then read that copy again in SDPA: three passes
over the KV bytes, and on CPU decode attention is bound by exactly those bytes.
Written as gather -> dot -> masked softmax -> weighted sum, the function below
lets inductor generate a single C++ loop that reads each cached key and value
once through the block table, with no intermediate copy (about 3.5x faster on a
256-request SmolLM2 decode batch). Compilation needs a C++ compiler and takes
seconds once per process (inductor caches it on disk); if it fails the backend
keeps its SDPA path.
"""

from __future__ import annotations

import torch

from folo_core.logger import init_logger

logger = init_logger(__name__)


def paged_decode_attention(
    q: torch.Tensor,  # [num_reqs, num_kv_heads, group, head_size]: one query token per request
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    block_table: torch.Tensor,  # [num_reqs, max_blocks] (contiguous)
    seq_lens: torch.Tensor,  # [num_reqs]
    scale: float,
) -> torch.Tensor:  # [num_reqs, num_kv_heads, group, head_size]
    """Attention of each request's single query over its first ``seq_lens`` cached tokens."""
    k = key_cache[block_table]  # [R, nb, bs, KH, D]: fused away by inductor, never materialised
    v = value_cache[block_table]
    num_blocks, block_size = block_table.shape[1], key_cache.shape[1]
    positions = torch.arange(num_blocks * block_size, device=q.device).view(1, num_blocks, block_size, 1, 1)
    valid = positions < seq_lens.view(-1, 1, 1, 1, 1)  # [R, nb, bs, 1, 1]
    # Stale slots may hold anything (NaN included): select, never multiply by a zero weight.
    scores = (q[:, None, None].float() * k[..., None, :].float()).sum(-1) * scale  # [R, nb, bs, KH, G]
    scores = torch.where(valid, scores, float("-inf"))
    probs = (scores - scores.amax(dim=(1, 2), keepdim=True)).exp()
    values = torch.where(valid[..., None], v[..., None, :].float(), 0.0)
    out = (probs[..., None] * values).sum(dim=(1, 2))  # [R, KH, G, D]
    return (out / probs.sum(dim=(1, 2))[..., None]).to(q.dtype)


class CompiledDecode:
    """The compiled kernel, built on first use; ``None`` once compilation has failed."""

    _fn = None
    _failed = False

    @classmethod
    def run(cls, *args) -> torch.Tensor | None:
        if cls._failed:
            return None
        if cls._fn is None:
            logger.info("compiling the paged decode attention kernel (once per process)")
            cls._fn = torch.compile(paged_decode_attention, dynamic=True)
        try:
            return cls._fn(*args)
        except Exception as exc:  # no C++ compiler, unsupported platform, ...
            cls._failed = True
            logger.warning("compiled decode attention unavailable (%s: %s); using SDPA",
                           type(exc).__name__, exc)
            return None
