"""Logging setup: one ``folo`` logger tree, level from ``FOLO_LOGGING_LEVEL``."""

from __future__ import annotations

import logging
import os

_ROOT = "folo"


def _configure_root() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("FOLO_LOGGING_LEVEL", "INFO").upper())
    return root


def init_logger(name: str) -> logging.Logger:
    """A child of the ``folo`` logger, whatever package the module lives in."""
    _configure_root()
    return logging.getLogger(f"{_ROOT}.{name}")
