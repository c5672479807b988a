"""Small helpers with no better home."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


def lone_surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (a JSON ``\\ud800`` escape gives one), or None.

    No tokenizer and no UTF-8 response can take such a string.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
