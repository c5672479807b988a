"""An ``EngineCore`` in a process of its own (vLLM v1's ``EngineCoreProc``), and the handle the front end keeps.

The process builds the core from the resolved ``EngineConfig`` (plugins come from
the ``folo`` entry-point group, the tokenizer from the checkpoint), reports what
it picked, then serves calls over a pipe, one at a time and in order, each reply
carrying the core's stats after the call (so the front end never asks a
scheduler): the front end either waits for each reply (``call``) or sends the same call to several
cores before collecting their replies (``send`` then ``recv``), so data-parallel
replicas step at the same time. A call's exception travels back and is raised in
the caller; a dead process reads as ``EngineDeadError`` naming its exit code.

Core processes fork from Folo's fork server (``folo_core/processes.py``). They
are not daemons, so their executors may start tensor-parallel workers of their
own; a finalizer stops each when its handle is dropped or at exit.
"""

from __future__ import annotations

import os
import pickle
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from folo_core.config import EngineConfig
from folo_core.engine.errors import EngineDeadError
from folo_core.engine.selection import SelectedPlugins
from folo_core.engine.stats import EngineStats
from folo_core.processes import caller_state, process_context, restore_caller_state

_STOP = "stop"
_STOP_TIMEOUT_S = 10


@dataclass
class EngineCoreInfo:
    """What a started core tells the front end."""

    selected: SelectedPlugins
    max_request_tokens: int
    pid: int


def picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ``RuntimeError`` with its text."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


Reply = tuple[str, Any, "EngineStats | None"]  # ("ok" | "error", result or exception, the core's stats)


class EngineCoreServer:
    """Builds one ``EngineCore`` where it runs and answers calls by name; the body of a core
    process here and of a Ray actor (``ray_core.py``)."""

    def __init__(self, config: EngineConfig, num_threads: int | None) -> None:
        import torch

        from folo_core.engine.core import EngineCore
        from folo_core.hf_utils import engine_tokenizer
        from folo_core.plugins import get_plugin_manager

        if num_threads:
            torch.set_num_threads(num_threads)
        self.core = core = EngineCore(config, get_plugin_manager(), engine_tokenizer(config.model))
        self.calls = {"add_request": core.add_request, "abort_requests": core.abort_requests, "step": core.step,
                      "reset_prefix_cache": core.reset_prefix_cache}

    def ready(self) -> Reply:
        return "ok", EngineCoreInfo(self.core.selected, self.core.max_request_tokens, os.getpid()), \
            self.core.get_stats()

    def handle(self, name: str, args: tuple) -> Reply:
        try:
            result = ("ok", self.calls[name](*args))
        except Exception as exc:
            result = ("error", picklable(exc))
        return (*result, self.core.get_stats())

    def shutdown(self) -> None:
        self.core.shutdown()


def run_engine_core(config: EngineConfig, num_threads: int | None, conn: Connection,
                    caller: dict[str, Any]) -> None:
    """The process body: restore the caller's environment and import path (``caller_state``),
    build the core, then answer calls until told to stop or orphaned."""
    restore_caller_state(caller)
    try:
        server = EngineCoreServer(config, num_threads)
        conn.send(server.ready())
    except BaseException as exc:
        conn.send(("error", picklable(exc), None))
        return
    try:
        while True:
            try:
                call = conn.recv()
            except EOFError:  # the front end went away
                return
            if call == _STOP:
                return
            conn.send(server.handle(*call))
    finally:
        server.shutdown()


def _stop(process: Any, conn: Connection) -> None:
    try:
        conn.send(_STOP)
    except (OSError, ValueError):
        pass
    process.join(timeout=_STOP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()


class CoreHandle(ABC):
    """The front end's handle on one engine core somewhere else: calls go out with ``send`` and
    their replies come back in order with ``recv``; ``name`` labels it in errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.info: EngineCoreInfo | None = None
        self.stats: EngineStats | None = None  # the core's, after the last call it answered

    @abstractmethod
    def send(self, name: str, *args: Any) -> None:
        """Queue a call; raises ``EngineDeadError`` if the core is gone."""

    @abstractmethod
    def _recv_reply(self) -> Reply:
        """The oldest unanswered call's reply; raises ``EngineDeadError`` if the core is gone."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    def dead_error(self) -> EngineDeadError: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    def wait_ready(self) -> EngineCoreInfo:
        """Block until the core is built (cores start side by side); its startup error raises here."""
        if self.info is None:
            self.info = self.recv()
        return self.info

    def recv(self) -> Any:
        """The reply to the oldest call not yet answered; its exception is raised here."""
        status, value, stats = self._recv_reply()
        self.stats = stats or self.stats
        if status == "error":
            raise value
        return value

    def call(self, name: str, *args: Any) -> Any:
        self.send(name, *args)
        return self.recv()


class EngineCoreProc(CoreHandle):
    """A core in a process of its own on this machine, over a pipe (started at once)."""

    def __init__(self, config: EngineConfig, name: str, num_threads: int | None = None) -> None:
        super().__init__(name)
        context = process_context()
        self.conn, child = context.Pipe()
        self.process = context.Process(target=run_engine_core, name=f"folo-{name}",
                                       args=(config, num_threads, child, caller_state()))
        self.process.start()
        child.close()
        self._finalizer = weakref.finalize(self, _stop, self.process, self.conn)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self.process.is_alive()

    def dead_error(self) -> EngineDeadError:
        self.process.join(timeout=1)
        return EngineDeadError(f"{self.name} died (exit code {self.process.exitcode})")

    def send(self, name: str, *args: Any) -> None:
        try:
            self.conn.send((name, args))
        except (OSError, ValueError):
            raise self.dead_error() from None

    def _recv_reply(self) -> Reply:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise self.dead_error() from None

    def shutdown(self) -> None:
        self._finalizer()
