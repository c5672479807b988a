"""Errors a request's caller can get from the engine, offline or served."""

from __future__ import annotations

from typing import Any


class EngineStepError(RuntimeError):
    """A request finished with ``finish_reason="error"``: its step failed, or it could not run.

    The engine keeps serving. ``outputs`` holds every output of the call that raised
    (``LLM.generate`` returns nothing else), the failed ones included.
    """

    def __init__(self, message: str, outputs: list[Any] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or []


class EngineDeadError(RuntimeError):
    """The engine loop was shut down; nothing more will be answered."""
