"""Starting Folo's helper processes (engine cores, tensor-parallel ranks) fast and faithfully.

They fork from one ``forkserver`` that imported torch and the engine once, so
each starts in about a second instead of re-importing everything (a fresh
``spawn`` takes several). A forked process sees the fork server's environment,
from whenever that started, so the caller's environment travels with each
process and is restored first (``caller_environ`` / ``restore_environ``).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

_PRELOAD = ["folo_core.engine.core", "folo_core.worker.model_runner", "folo_core.hf_utils"]


def process_context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def caller_environ() -> dict[str, str]:
    return dict(os.environ)


def restore_environ(environ: dict[str, str]) -> None:
    """First thing in a started process: the environment its caller had."""
    os.environ.clear()
    os.environ.update(environ)
