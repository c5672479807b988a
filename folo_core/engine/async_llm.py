"""``AsyncLLM``: the ``LLMEngine`` step loop on one background thread, streamed to asyncio.

``LLMEngine`` is not thread-safe, so every engine call (add, abort, step, stats)
runs on the engine thread: callers post commands to a queue (and await a future
for the result), and the thread runs them between steps. Prompts are tokenized
and checked before that, on a tokenizer thread of their own, so a long prompt
delays neither the event loop nor anyone's next step. Each step's outputs go
back to the asyncio queue of their request with ``call_soon_threadsafe``; results
and outputs leave only after the stat loggers recorded the loop turn that made
them, so a client holding its answer finds it counted in the metrics.

Requests are always streamed as DELTA outputs (each carries only new text and
token ids; the detokenizer holds back split characters and stop-string
prefixes). Closing or cancelling a ``generate()`` stream aborts the request, so
its KV blocks are freed at once. A request's own errors (bad prompt, overload)
raise in its caller; a request that finishes with ``finish_reason="error"`` raises
``EngineStepError`` in its own stream only. ``shutdown`` answers every call and
stream still open with ``EngineDeadError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from folo_core.config import ModelConfig
from folo_core.engine.core_client import CoreHealth
from folo_core.engine.errors import EngineDeadError, EngineStepError
from folo_core.engine.llm_engine import LLMEngine
from folo_core.engine.stats import EngineStats
from folo_core.engine.processor import ProcessedRequest, Processor, PromptType
from folo_core.engine.stats import IterationStats, RequestStats, StatLoggerBase
from folo_core.logger import init_logger
from folo_core.outputs import RequestOutput
from folo_core.sampling_params import RequestOutputKind, SamplingParams

logger = init_logger(__name__)

T = TypeVar("T")


__all__ = ["AsyncLLM", "EngineDeadError", "EngineStepError"]

_ABORTED = object()  # stream item: the request was aborted from outside
_SHUTDOWN = object()  # command: leave the loop


class _RequestStream:
    """The asyncio side of one request: a queue filled from the engine thread."""

    def __init__(self, arrival_time: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stats = RequestStats(arrival_time)

    def put(self, item: RequestOutput | BaseException | object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the consumer's event loop is closed: nobody is listening any more


class AsyncLLM:
    def __init__(self, engine: LLMEngine, stat_loggers: Sequence[StatLoggerBase] = ()) -> None:
        self.engine = engine
        self.stat_loggers = list(stat_loggers)
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._streams: dict[str, _RequestStream] = {}  # engine thread only
        self._iteration = IterationStats()  # engine thread only
        self._replies: list[Callable[[], None]] = []  # engine thread only: sent after the stats are recorded
        self._tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix="folo-tokenizer")
        self._closed = False  # set once, under the lock, with the shutdown command queued
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run_loop, name="folo-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, stat_loggers: Sequence[StatLoggerBase] = (), **kwargs: Any) -> "AsyncLLM":
        return cls(LLMEngine.from_engine_args(**kwargs), stat_loggers)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def get_tokenizer(self) -> Any:
        return self.engine.get_tokenizer()

    @property
    def processor(self) -> Processor:
        """The request checks and tokenizing; stateless, so callers run it on the tokenizer thread."""
        return self.engine.processor

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.config.model

    # ----- asyncio side -----

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams, request_id: str,
                       priority: int = 0) -> AsyncGenerator[RequestOutput, None]:
        """Add the request and yield its DELTA outputs until it finishes.

        Errors of ``add_request`` (``ValueError``, ``OverflowError``) raise at the first
        ``__anext__``; a failed step raises ``EngineStepError``.
        """
        params = sampling_params.clone()
        params.output_kind = RequestOutputKind.DELTA
        arrival_time = time.time()
        stream = _RequestStream(arrival_time)
        processed = await self.run_on_tokenizer_thread(self.processor.process, prompt, params)
        added = self._post(self._add_request, request_id, processed, arrival_time, priority, stream)
        try:
            await asyncio.wrap_future(added)
        except asyncio.CancelledError:
            self._abort_soon(request_id, stream)  # the add may have run anyway
            raise
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if item is _ABORTED:
                    return
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # closed early or cancelled: the client is gone
                self._abort_soon(request_id, stream)

    async def run_on_tokenizer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the tokenizer thread: rendering and tokenizing, off the event loop."""
        try:
            future = self._tokenizer_pool.submit(fn, *args)
        except RuntimeError:  # the pool was shut down
            raise EngineDeadError("the engine was shut down") from None
        return await asyncio.wrap_future(future)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; its ``generate()`` stream ends."""
        self._abort_soon(request_id, None)

    async def get_stats(self) -> EngineStats:
        stats = await asyncio.wrap_future(self._post(self.engine.get_stats))
        return dataclasses.replace(stats, prefix_cache=dataclasses.replace(stats.prefix_cache))

    async def health(self) -> CoreHealth:
        """How many engine cores still serve (data-parallel replicas can die one by one)."""
        return await asyncio.wrap_future(self._post(self.engine.health))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop after its current step; every open stream and queued call gets
        ``EngineDeadError``. ``timeout=0`` returns at once (e.g. from a signal handler)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._commands.put(_SHUTDOWN)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)
        if timeout != 0:
            self._thread.join(timeout)

    def _abort_soon(self, request_id: str, stream: _RequestStream | None) -> None:
        """Queue an abort without waiting (safe in ``finally``); a closed loop frees everything itself."""
        with self._lock:
            if not self._closed:
                self._commands.put((self._abort, (request_id, stream), Future()))

    def _post(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:  # nothing can queue behind the shutdown command
            if self._closed or not self._thread.is_alive():
                raise EngineDeadError("the engine loop is not running")
            self._commands.put((fn, args, future))
        return future

    # ----- engine thread -----

    def _run_loop(self) -> None:
        running = True
        while running:
            try:
                running = self._run_commands(block=not self.engine.has_unfinished_requests())
                if running and self.engine.has_unfinished_requests():
                    self._step()
            except Exception:  # the loop must outlive any single failure
                logger.exception("unexpected error in the engine loop")
            finally:
                # Stats first: whoever gets a result or an output sees it counted in the metrics.
                self._record_stats()
                self._send_replies()
        self.engine.shutdown()
        error = EngineDeadError("the engine was shut down")
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()
        while True:  # calls queued before the shutdown command but not yet run
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command is not _SHUTDOWN and command[2].set_running_or_notify_cancel():
                command[2].set_exception(error)

    def _run_commands(self, block: bool) -> bool:
        """Run the queued commands (waiting for one if ``block``); False on shutdown."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            if command is _SHUTDOWN:
                return False
            fn, args, future = command
            if future.set_running_or_notify_cancel():
                try:
                    self._replies.append(partial(future.set_result, fn(*args)))
                except BaseException as exc:  # handed to the caller, not raised here
                    self._replies.append(partial(future.set_exception, exc))
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _reply(self, stream: _RequestStream, item: RequestOutput | BaseException | object) -> None:
        self._replies.append(partial(stream.put, item))

    def _send_replies(self) -> None:
        replies, self._replies = self._replies, []
        for reply in replies:
            reply()

    def _add_request(self, request_id: str, request: ProcessedRequest, arrival_time: float, priority: int,
                     stream: _RequestStream) -> None:
        self.engine.add_processed_request(request_id, request, arrival_time, priority)
        self._streams[request_id] = stream

    def _abort(self, request_id: str, stream: _RequestStream | None) -> None:
        """Abort ``request_id`` (only if it still belongs to ``stream``, when one is given)."""
        current = self._streams.get(request_id)
        if current is None or (stream is not None and current is not stream):
            return
        self.engine.abort_request(request_id)
        del self._streams[request_id]
        self._iteration.finish(current.stats, "abort", time.time())
        self._reply(current, _ABORTED)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self._fail_in_flight(exc)
            return
        now = time.time()
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            error = next((c.error for c in output.outputs if c.finish_reason == "error"), None)
            if error is not None:
                self._fail_request(output.request_id, stream, error, now)
                continue
            self._iteration.update_from_output(output, stream.stats, now)
            if output.finished:
                del self._streams[output.request_id]
            self._reply(stream, output)

    def _fail_request(self, request_id: str, stream: _RequestStream, error: str, now: float) -> None:
        """One request finished with an error: it alone raises (with ``n > 1`` its siblings stop too)."""
        self.engine.abort_request(request_id)
        del self._streams[request_id]
        self._iteration.finish(stream.stats, "error", now)
        self._reply(stream, EngineStepError(error))

    def _fail_in_flight(self, exc: Exception) -> None:
        request_ids = list(self._streams)
        logger.error("engine step failed (%r); failing %d request(s) in flight", exc, len(request_ids),
                     exc_info=exc)
        try:
            self.engine.abort_request(request_ids)
        except Exception:
            logger.exception("could not abort the failed requests")
        now = time.time()
        for request_id in request_ids:
            stream = self._streams.pop(request_id)
            self._iteration.finish(stream.stats, "error", now)
            error = EngineStepError(f"engine step failed: {exc}")
            error.__cause__ = exc
            self._reply(stream, error)

    def _record_stats(self) -> None:
        iteration, self._iteration = self._iteration, IterationStats()
        if not self.stat_loggers:
            return
        engine_stats = self.engine.get_stats()
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(engine_stats, iteration)
            except Exception:
                logger.exception("stat logger %s failed", type(stat_logger).__name__)
