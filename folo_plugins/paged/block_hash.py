"""Chained block hashes: a full block's key is its parent's key plus its tokens.

The chain root mixes in the engine's extra key (model, dtype, quantization) and
the request's ``cache_salt``, so anything that changes the KV for the same tokens
changes every hash after it.
"""

from __future__ import annotations

import hashlib
from array import array


def root_hash(extra_key: str, cache_salt: str | None) -> bytes:
    return hashlib.blake2b(f"{extra_key}\0{cache_salt or ''}".encode(), digest_size=16).digest()


def hash_block_tokens(parent: bytes, token_ids: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def extend_block_hashes(hashes: list[bytes], token_ids: list[int], block_size: int, root: bytes) -> None:
    """Append the hashes of full blocks of ``token_ids`` not hashed yet."""
    for start in range(len(hashes) * block_size, len(token_ids) - block_size + 1, block_size):
        parent = hashes[-1] if hashes else root
        hashes.append(hash_block_tokens(parent, token_ids[start:start + block_size]))
