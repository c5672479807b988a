"""The GPTQ tensor layout (AutoGPTQ / gptqmodel / transformers), unpacked in plain torch.

Per quantized ``Linear(in=K, out=N)`` with ``bits`` b and pack factor ``pf = 32 // b``:

- ``qweight`` int32 ``[K / pf, N]``: row r holds input rows ``pf*r .. pf*r + pf - 1``,
  the code of row ``pf*r + i`` in bits ``b*i .. b*i + b - 1``;
- ``qzeros`` int32 ``[groups, N / pf]``: packed the same way along the output;
- ``scales`` fp16 ``[groups, N]``; ``g_idx`` int32 ``[K]``: the group of each input row;
- ``W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])`` and ``y = x @ W``.

Checkpoint format ``gptq`` (v1) stores each zero point minus one, written as one
word-level subtraction of ``0x11111111`` (for 4 bits) with borrows between nibbles;
a real zero point of 0 is stored as 0xF plus a borrow. Only the word-level inverse
(add ``0x11111111`` modulo 2**32, as gptqmodel's v1 -> v2 conversion does) recovers
it; a per-nibble ``+1`` does not. ``gptq_v2`` stores the zero points as they are.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def pack_factor(bits: int) -> int:
    return 32 // bits


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 32, bits, dtype=torch.int32, device=device)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[R, N]`` -> int32 codes ``[R * pf, N]`` (unpacked along the first dim)."""
    pf = pack_factor(bits)
    codes = (packed.unsqueeze(1) >> _shifts(bits, packed.device).view(1, pf, 1)) & ((1 << bits) - 1)
    return codes.reshape(-1, packed.shape[1])


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[G, C]`` -> int32 codes ``[G, C * pf]`` (unpacked along the last dim)."""
    return unpack_rows(packed.T, bits).T


def _to_int32_words(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> the int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``unpack_rows``: codes ``[R * pf, N]`` -> int32 ``[R, N]``."""
    pf = pack_factor(bits)
    grouped = codes.to(torch.int64).reshape(-1, pf, codes.shape[1])
    words = (grouped << _shifts(bits, codes.device).to(torch.int64).view(1, pf, 1)).sum(1)
    return _to_int32_words(words)


def pack_cols(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``unpack_cols``: codes ``[G, C * pf]`` -> int32 ``[G, C]``."""
    return pack_rows(codes.T, bits).T.contiguous()


def _v1_offset(bits: int) -> int:
    """The word v1 subtracts: a 1 in every field (0x11111111 for 4 bits)."""
    return sum(1 << (bits * i) for i in range(pack_factor(bits)))


def decode_zeros(qzeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """Packed ``qzeros`` -> the real zero points, int32 ``[groups, N]``."""
    if checkpoint_format == "gptq":
        words = (qzeros.to(torch.int64) + _v1_offset(bits)) & 0xFFFFFFFF
        qzeros = _to_int32_words(words)
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"unknown GPTQ checkpoint_format {checkpoint_format!r}")
    return unpack_cols(qzeros, bits)


def encode_zeros(zeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """Inverse of ``decode_zeros``: real zero points ``[groups, N]`` -> packed ``qzeros``."""
    packed = pack_cols(zeros, bits)
    if checkpoint_format == "gptq_v2":
        return packed
    return _to_int32_words((packed.to(torch.int64) - _v1_offset(bits)) & 0xFFFFFFFF)


def dequantize(qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               bits: int) -> torch.Tensor:
    """``W [K, N]`` in the scales' dtype from packed codes and real zero points.

    The product is rounded to the scales' dtype (fp16 in checkpoints) as AutoGPTQ's
    and gptqmodel's torch kernels do, so float32 runs match them to summation order.
    """
    groups = g_idx.long()
    codes = unpack_rows(qweight, bits)[: groups.numel()]
    return (codes - zeros[groups]).to(scales.dtype) * scales[groups]
