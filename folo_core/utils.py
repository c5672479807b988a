"""Small helpers with no better home."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


def error_summary(exc: BaseException) -> str:
    """``Type: first line of the message``, for a one-line log of a failure that is handled."""
    message = str(exc)
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"


def lone_surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (a JSON ``\\ud800`` escape gives one), or None.

    No tokenizer and no UTF-8 response can take such a string.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
