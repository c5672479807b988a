"""The OpenAI-compatible HTTP server (``folo serve``): FastAPI app over one ``AsyncLLM``."""

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

from folo_core.config import ConfigError, EngineConfig
from folo_core.default_model import DEFAULT_MODEL_NAME
from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.llm_engine import LLMEngine
from folo_core.entrypoints.openai.errors import (OpenAIError, from_http_status, from_validation_error,
                                                 internal_error, unauthorized)
from folo_core.entrypoints.openai.metrics import PrometheusStatLogger
from folo_core.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from folo_core.entrypoints.openai.serving_chat import OpenAIServingChat
from folo_core.entrypoints.openai.serving_completion import OpenAIServingCompletion
from folo_core.logger import init_logger

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


def build_app(engine: AsyncLLM, model_name: str, metrics: PrometheusStatLogger, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.shutdown()

    app = FastAPI(title="Folo OpenAI-compatible server", lifespan=lifespan)
    completions = OpenAIServingCompletion(engine, model_name)
    chat = OpenAIServingChat(engine, model_name)
    model_config = engine.engine.config.model

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return from_http_status(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error serving %s", request.url.path)
        return internal_error(f"internal server error: {type(exc).__name__}").response()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.is_running else 503)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, root=model_config.model,
                                         max_model_len=model_config.max_model_len)])

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
        return await completions.create(request, raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
        return await chat.create(request, raw_request)

    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    return app


def run_server(args: argparse.Namespace) -> int:
    """Load the engine (errors surface before the port is bound), then serve until interrupted."""
    config = EngineConfig.from_cli_args(args)
    engine = LLMEngine(config)
    if engine.get_tokenizer() is None:
        raise ConfigError("folo serve needs a tokenizer; drop --skip-tokenizer-init")
    model_name = args.served_model_name or config.model.model or DEFAULT_MODEL_NAME
    metrics = PrometheusStatLogger(model_name)
    app = build_app(AsyncLLM(engine, [metrics]), model_name, metrics, args.api_key)
    logger.info("serving %s as %r on http://%s:%d", engine.config.model.model, model_name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                timeout_graceful_shutdown=5)
    return 0
