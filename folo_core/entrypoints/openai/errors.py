"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from folo_core.entrypoints.openai.protocol import ErrorInfo, ErrorResponse


class OpenAIError(Exception):
    """Raised by request handlers; the app turns it into an error response."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                 type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.info).model_dump(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(message, HTTPStatus.BAD_REQUEST, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(f"The model `{model}` does not exist.", HTTPStatus.NOT_FOUND, param="model",
                       code="model_not_found")


def overloaded(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.SERVICE_UNAVAILABLE, type="server_error", code="overloaded")


def shutting_down(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.SERVICE_UNAVAILABLE, type="server_error", code="shutting_down")


def request_too_large(limit: int) -> OpenAIError:
    return OpenAIError(f"the request body is larger than {limit} bytes (--max-request-body-bytes)",
                       HTTPStatus.REQUEST_ENTITY_TOO_LARGE, code="request_too_large")


def internal_error(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.INTERNAL_SERVER_ERROR, type="server_error", code="internal_error")


def unauthorized() -> OpenAIError:
    return OpenAIError("Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                       HTTPStatus.UNAUTHORIZED, code="invalid_api_key")


def from_http_status(status: int, detail: str) -> OpenAIError:
    """Routing errors (unknown path, wrong method) in the same shape."""
    return OpenAIError(detail, HTTPStatus(status), code=HTTPStatus(status).phrase.lower().replace(" ", "_"))


def from_validation_error(exc: RequestValidationError) -> OpenAIError:
    """The first problem of a request body: malformed JSON, or the field with a bad value."""
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return bad_request(f"malformed JSON: {error.get('ctx', {}).get('error', error['msg'])}", code="invalid_json")
    loc = [str(part) for part in error["loc"][1:]]  # drop the leading "body"
    # A union field reports one error per member type; its name is enough.
    param = ".".join(part for part in loc if not _is_type_tag(part)) or None
    message = error["msg"].removeprefix("Value error, ")
    if param is None:
        return bad_request(f"invalid request body: {message}", code="invalid_request_body")
    if error["type"] == "missing":
        return bad_request(f"{param} is required", param=param, code="missing_required_parameter")
    return bad_request(f"{param}: {message}", param=param)


def _is_type_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool") or part.startswith(("list[", "dict[", "function-", "literal["))
