"""What completions and chat share: model check, engine stream, SSE framing, usage, disconnects.

A handler turns its request into a prompt and ``SamplingParams`` (rendering runs
on the engine's tokenizer thread, never on the event loop), starts the request
and waits for its first output, so that errors of ``add_request`` (bad prompt
400, overload 503, shutting down 503) still become proper HTTP errors. After that the
response is either an SSE stream of chunks or, once the request finishes, one
JSON body. A client that goes away (stream closed, or disconnect while waiting
for a whole response) aborts its request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.errors import EngineDeadError, EngineStepError
from folo_core.engine.processor import PromptType
from folo_core.entrypoints.openai.errors import (OpenAIError, bad_request, internal_error, model_not_found,
                                                 overloaded, shutting_down)
from folo_core.entrypoints.openai.protocol import ErrorResponse, SamplingRequest, UsageInfo
from folo_core.logger import init_logger
from folo_core.outputs import CompletionOutput, PromptLogprobs, RequestOutput, SampleLogprobs
from folo_core.sampling_params import SamplingParams

logger = init_logger(__name__)

RequestT = TypeVar("RequestT", bound=SamplingRequest)
T = TypeVar("T")


@dataclass
class RequestState:
    """One request's identity and what its DELTA outputs added up to so far, per choice (``n``)."""

    request_id: str
    model: str
    n: int
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt: str | None = None
    prompt_logprobs: PromptLogprobs | None = None
    choices: list[CompletionOutput] = field(init=False)
    streamed_chars: list[int] = field(init=False)  # per choice: text already sent (tool calls hold some back)

    def __post_init__(self) -> None:
        self.choices = [CompletionOutput(index=i, text="", token_ids=[], logprobs=[]) for i in range(self.n)]
        self.streamed_chars = [0] * self.n

    def add(self, output: RequestOutput) -> list[CompletionOutput]:
        """Fold in one output; returns its deltas (one per choice that moved)."""
        self.prompt_token_ids, self.prompt = output.prompt_token_ids, output.prompt
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        for delta in output.outputs:
            choice = self.choices[delta.index]
            choice.text += delta.text
            choice.token_ids.extend(delta.token_ids)
            choice.logprobs.extend(delta.logprobs or [])
            choice.finish_reason, choice.stop_reason = delta.finish_reason, delta.stop_reason
        return output.outputs

    def usage(self) -> UsageInfo:
        prompt_tokens = len(self.prompt_token_ids)  # shared by all n choices, counted once (as vLLM does)
        completion_tokens = sum(len(choice.token_ids) for choice in self.choices)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)


def sse(payload: BaseModel | str) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n"


class OpenAIServing(ABC, Generic[RequestT]):
    request_id_prefix: ClassVar[str]

    def __init__(self, engine: AsyncLLM, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = engine.get_tokenizer()

    def sampling_params(self, request: RequestT) -> SamplingParams:
        """The request's ``SamplingParams``; raises ``ValueError`` for values that cannot be."""
        return request.to_sampling_params()

    @abstractmethod
    def build_prompt(self, request: RequestT) -> PromptType:
        """The engine prompt; raises ``ValueError`` for a request that cannot become one."""

    @abstractmethod
    def stream_chunks(self, request: RequestT, state: RequestState, delta: CompletionOutput) -> list[BaseModel]:
        """The chunks for one choice's delta (possibly none); ``state`` already includes it."""

    @abstractmethod
    def usage_chunk(self, state: RequestState) -> BaseModel:
        """The last chunk of a stream with ``include_usage``: no choices, only usage."""

    @abstractmethod
    def full_response(self, request: RequestT, state: RequestState) -> BaseModel:
        ...

    async def create(self, request: RequestT, raw_request: Request) -> Response:
        check_model(request.model, self.model_name)
        try:
            params = self.sampling_params(request)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        prompt = await on_tokenizer_thread(self.engine, self.build_prompt, request)
        state = RequestState(f"{self.request_id_prefix}-{uuid.uuid4().hex}", self.model_name, params.n)
        outputs = self.engine.generate(prompt, params, state.request_id)
        try:
            if request.stream:
                first = await _cancel_on_disconnect(self._first_output(outputs), raw_request)
                return StreamingResponse(self._stream(request, state, first, outputs),
                                         media_type="text/event-stream")
            await _cancel_on_disconnect(self._collect(state, outputs), raw_request)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; the request was aborted
        return JSONResponse(self.full_response(request, state).model_dump())

    @staticmethod
    async def _first_output(outputs: AsyncGenerator[RequestOutput, None]) -> RequestOutput:
        try:
            return await anext(outputs)
        except ValueError as exc:  # prompt too long, bad token ids, bad params
            raise bad_request(str(exc)) from None
        except OverflowError as exc:  # max_waiting_requests reached
            raise overloaded(str(exc)) from None
        except (EngineStepError, EngineDeadError) as exc:
            raise _engine_error(exc) from None

    async def _collect(self, state: RequestState, outputs: AsyncGenerator[RequestOutput, None]) -> None:
        state.add(await self._first_output(outputs))
        try:
            async for output in outputs:
                state.add(output)
        except (EngineStepError, EngineDeadError) as exc:
            raise _engine_error(exc) from None

    async def _stream(self, request: RequestT, state: RequestState, first: RequestOutput,
                      outputs: AsyncGenerator[RequestOutput, None]) -> AsyncIterator[str]:
        try:
            for chunk in self._chunks(request, state, first):
                yield chunk
            async for output in outputs:
                for chunk in self._chunks(request, state, output):
                    yield chunk
            if request.include_usage:
                yield sse(self.usage_chunk(state))
        except Exception as exc:  # the 200 status is sent: report the error inside the stream
            if not isinstance(exc, (EngineStepError, EngineDeadError)):  # the engine logged its own
                logger.exception("streaming %s failed", state.request_id)
            yield sse(ErrorResponse(error=_engine_error(exc).info))
        finally:
            await outputs.aclose()  # aborts the request if it is still running
        yield sse("[DONE]")

    def _chunks(self, request: RequestT, state: RequestState, output: RequestOutput) -> list[str]:
        return [sse(chunk) for delta in state.add(output) for chunk in self.stream_chunks(request, state, delta)]


def check_model(requested: str | None, served: str) -> None:
    """404 unless the request names the served model (or none)."""
    if requested is not None and requested != served:
        raise model_not_found(requested)


async def on_tokenizer_thread(engine: AsyncLLM, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the engine's tokenizer thread: a ``ValueError`` is a 400, a shut-down engine a 503."""
    try:
        return await engine.run_on_tokenizer_thread(fn, *args)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    except EngineDeadError as exc:
        raise shutting_down(str(exc)) from None


def _engine_error(exc: Exception) -> OpenAIError:
    """A request the engine could not finish: shutting down (503) or a failed step (500)."""
    return shutting_down(str(exc)) if isinstance(exc, EngineDeadError) else internal_error(str(exc))


class _ClientGone(Exception):
    pass


async def _cancel_on_disconnect(work: Coroutine[Any, Any, T], raw_request: Request) -> T:
    """Await ``work``, cancelling it (which aborts its request) if the client disconnects first,
    or if this handler itself is cancelled (a server timeout, shutdown)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    raise _ClientGone


async def _wait_for_disconnect(raw_request: Request) -> None:
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass
