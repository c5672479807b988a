"""Starting Folo's helper processes (engine cores, tensor-parallel ranks) fast and faithfully.

They fork from one ``forkserver`` that imported torch and the engine once, so
each starts in about a second instead of re-importing everything (a fresh
``spawn`` takes several). A forked process sees the fork server's environment and
``sys.path``, from whenever that started, so the caller's travel with each
process and are restored first (``caller_state`` / ``restore_caller_state``):
a plugin that became importable after the server started is found too.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext
from typing import Any

_PRELOAD = ["folo_core.engine.core", "folo_core.worker.model_runner", "folo_core.hf_utils"]


def process_context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def caller_state() -> dict[str, Any]:
    return {"environ": dict(os.environ), "sys_path": list(sys.path)}


def restore_caller_state(state: dict[str, Any]) -> None:
    """First thing in a started process: the environment and import path its caller had."""
    os.environ.clear()
    os.environ.update(state["environ"])
    sys.path[:] = state["sys_path"]
