"""One error shape for every failure, `{"error": {"code", "message", "field"}}`; no tracebacks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from moviegen_dagster import dispatch

log = logging.getLogger("moviegen.api")

# Stable machine-readable codes per HTTP status (clients branch on `code`, not on the message).
CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}
RETRY_AFTER_SECONDS = "5"


class ErrorDetail(BaseModel):
    """What went wrong, and which request field (dotted path, `[i]` for list items) if any."""

    code: str
    message: str
    field: str | None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error the API answers deliberately (auth, scope, limits) in the common shape."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code or CODE_BY_STATUS.get(status_code, "error")
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON document of an error."""
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error response in the common shape."""
    return JSONResponse(
        error_body(code or CODE_BY_STATUS.get(status_code, "error"), message, field),
        status_code=status_code,
        headers=dict(headers) if headers else None,
    )


def format_loc(loc: Sequence[str | int]) -> str | None:
    """A pydantic location as a field path: `("body", "task_data", "a", 0)` -> `task_data.a[0]`."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        source = parts.pop(0)
        # FastAPI puts the JSON decode position after "body"; the field is the body itself.
        if not parts or (source == "body" and isinstance(parts[0], int)):
            return "body" if source == "body" else None
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or None


# Clearer words than pydantic's for the commonest mistakes.
_MESSAGES = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """Request validation errors answer 400 (not FastAPI's 422) naming the first bad field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(400, "invalid request", code="validation_error")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed JSON")
        return error_response(
            400, f"body: malformed JSON ({reason})", code="invalid_json", field="body"
        )
    ctx = first.get("ctx") or {}
    field = ctx.get("field") if isinstance(ctx.get("field"), str) else None
    field = field or format_loc(first.get("loc", ()))
    text = _MESSAGES.get(first.get("type", ""), first.get("msg", "invalid value"))
    # pydantic prefixes messages of validators' ValueErrors; the field name says enough.
    text = text.removeprefix("Value error, ")
    more = len(errors) - 1
    message = f"{field}: {text}" if field else text
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return error_response(400, message, code="validation_error", field=field)


def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette/FastAPI HTTPExceptions (routing 404/405 included) in the common shape."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    return error_response(status, message, headers=exc.headers)


def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Deliberate API errors."""
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status_code, exc.message, code=exc.code, field=exc.field, headers=exc.headers
    )


def _conflict_handler(request: Request, exc: Exception) -> JSONResponse:
    """The task's state forbids the action (cancel a completed task, retry a running one)."""
    return error_response(409, str(exc) or "the task's state does not allow this")


def _unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Database or broker down: 503 so clients retry, without internals in the message."""
    log.warning("%s %s: backend unavailable: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "the task service cannot reach its database or broker; try again shortly",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _internal_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: logged with its traceback here, a generic message to the client."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the common shape."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(dispatch.Conflict, _conflict_handler)
    app.add_exception_handler(dispatch.Unavailable, _unavailable_handler)
    # PoolTimeout and PoolClosed are OperationalErrors too.
    app.add_exception_handler(psycopg.OperationalError, _unavailable_handler)
    # Exception goes to Starlette's outermost ServerErrorMiddleware, so it also catches
    # failures in middleware; that middleware re-raises afterwards for the server's log.
    app.add_exception_handler(Exception, _internal_handler)


# OpenAPI: documenting "4XX" also stops FastAPI from advertising a 422 it never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Client error in the common error shape."},
    503: {"model": ErrorResponse, "description": "Database or broker unavailable; retry later."},
}
