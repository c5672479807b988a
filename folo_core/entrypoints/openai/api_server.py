"""The OpenAI-compatible HTTP server (``folo serve``): FastAPI app over one ``AsyncLLM``.

On SIGTERM/SIGINT the engine stops first: every open stream ends with an error
event and ``[DONE]``, every waiting non-streamed request gets a JSON 503, and only
then does uvicorn close the connections.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from folo_core import __version__
from folo_core.config import ConfigError, EngineConfig
from folo_core.default_model import DEFAULT_MODEL_NAME
from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.llm_engine import LLMEngine
from folo_core.entrypoints.cli import DEFAULT_MAX_REQUEST_BODY_BYTES
from folo_core.entrypoints.openai.errors import (OpenAIError, from_http_status, from_validation_error,
                                                 internal_error, request_too_large, unauthorized)
from folo_core.entrypoints.openai.metrics import PrometheusStatLogger
from folo_core.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                                   DetokenizeResponse, ModelCard, ModelList, TokenizeRequest,
                                                   TokenizeResponse, VersionResponse)
from folo_core.entrypoints.openai.serving_chat import OpenAIServingChat
from folo_core.entrypoints.openai.serving_completion import OpenAIServingCompletion
from folo_core.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from folo_core.logger import init_logger
from folo_core.plugins import get_plugin_manager
from folo_core.tool_parsers import ToolParser

logger = init_logger(__name__)


class APIKeyMiddleware:
    """401 for ``/v1/*`` requests without ``Authorization: Bearer <key>``.

    ``/health`` and ``/metrics`` stay open for probes and scrapers, as in vLLM.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):
                await unauthorized().response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; FastAPI passes HTTP exceptions through body parsing."""

    def __init__(self) -> None:
        super().__init__(413)


class BodySizeLimitMiddleware:
    """413 for a request body over ``limit`` bytes, declared (Content-Length) or streamed (chunked),
    before the body is parsed: no client can make the server hold an unbounded body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await request_too_large(self.limit).response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


def build_app(engine: AsyncLLM, model_name: str, metrics: PrometheusStatLogger, api_key: str | None = None,
              trust_request_chat_template: bool = False,
              max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
              tool_parser: ToolParser | None = None, enable_auto_tool_choice: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.shutdown()

    app = FastAPI(title="Folo OpenAI-compatible server", lifespan=lifespan)
    completions = OpenAIServingCompletion(engine, model_name)
    chat = OpenAIServingChat(engine, model_name, trust_request_chat_template, tool_parser, enable_auto_tool_choice)
    tokenization = OpenAIServingTokenization(engine, model_name)
    model_config = engine.model_config

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, _BodyTooLarge):
            return request_too_large(max_request_body_bytes).response()
        return from_http_status(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error serving %s", request.url.path)
        return internal_error(f"internal server error: {type(exc).__name__}").response()

    @app.get("/health")
    async def health() -> Response:
        """200 while serving (a body names lost data-parallel replicas); 503 once nothing serves."""
        if not engine.is_running:
            return Response(status_code=503)
        cores = await engine.health()
        if not cores.degraded:
            return Response(status_code=200)
        return JSONResponse({"status": "degraded" if cores.num_alive else "dead", "engine_cores": cores.num_cores,
                             "engine_cores_alive": cores.num_alive, "errors": cores.errors},
                            status_code=200 if cores.num_alive else 503)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, root=model_config.model,
                                         max_model_len=model_config.max_model_len)])

    @app.get("/version")
    async def version() -> VersionResponse:
        return VersionResponse(version=__version__)

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> TokenizeResponse:
        return await tokenization.tokenize(request)

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> DetokenizeResponse:
        return await tokenization.detokenize(request)

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
        return await completions.create(request, raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
        return await chat.create(request, raw_request)

    app.add_middleware(BodySizeLimitMiddleware, limit=max_request_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    return app


class _Server(uvicorn.Server):
    """uvicorn, with the engine stopped as soon as a shutdown signal arrives (see the module doc)."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLM) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: object) -> None:
        self.engine.shutdown(timeout=0)
        super().handle_exit(sig, frame)


def run_server(args: argparse.Namespace) -> int:
    """Load the engine (errors surface before the port is bound), then serve until interrupted."""
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ConfigError("--enable-auto-tool-choice needs --tool-call-parser (e.g. hermes, llama3_json)")
    config = EngineConfig.from_cli_args(args)
    engine = LLMEngine(config, multiprocess_mode=not args.engine_core_in_process)
    if engine.get_tokenizer() is None:
        raise ConfigError("folo serve needs a tokenizer; drop --skip-tokenizer-init")
    model_name = args.served_model_name or config.model.model or DEFAULT_MODEL_NAME
    metrics = PrometheusStatLogger(model_name)
    tool_parser = None
    if args.tool_call_parser:
        tool_parser = get_plugin_manager().registry("tool_parser").get(args.tool_call_parser).impl(
            engine.get_tokenizer())
    async_engine = AsyncLLM(engine, [metrics])
    app = build_app(async_engine, model_name, metrics, args.api_key, args.trust_request_chat_template,
                    args.max_request_body_bytes, tool_parser, args.enable_auto_tool_choice)
    logger.info("serving %s as %r on http://%s:%d", engine.config.model.model, model_name, args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                            timeout_graceful_shutdown=5)
    _Server(config, async_engine).run()
    return 0
