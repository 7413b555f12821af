"""One error shape for every failure, `{"error": {"code", "message", "field"}}`; no tracebacks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import httpx
import psycopg
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from moviegen_dagster import dispatch, idempotency, limits

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
    429: "too_many_requests",
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


# FastAPI answers every JSON body failure other than a syntax error with this bare detail:
# nesting past Python's recursion limit, integers over its 4,300-digit limit, bytes that are
# not UTF-8. The exception it chains says which.
_BODY_PARSE_FAILED = "There was an error parsing the body"


def _body_parse_message(cause: BaseException | None) -> str:
    """A client-facing reason for a JSON body Python's decoder gave up on."""
    if isinstance(cause, RecursionError):
        return "body: malformed JSON (nested too deeply)"
    if isinstance(cause, UnicodeDecodeError):
        return "body: malformed JSON (not valid UTF-8)"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "body: malformed JSON (a number has too many digits)"
    return "body: malformed JSON"


def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette/FastAPI HTTPExceptions (routing 404/405 included) in the common shape."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and exc.detail == _BODY_PARSE_FAILED:
        message = _body_parse_message(exc.__cause__)
        return error_response(400, message, code="invalid_json", field="body")
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


def _idempotency_conflict_handler(request: Request, exc: Exception) -> JSONResponse:
    """An Idempotency-Key reused with a different body: 409 naming the header."""
    return error_response(409, str(exc), code="idempotency_conflict", field=idempotency.HEADER)


def _refused_handler(request: Request, exc: Exception) -> JSONResponse:
    """Rate limit or queue cap reached: 429 with the computed Retry-After."""
    assert isinstance(exc, limits.Refused)
    return error_response(
        429, str(exc), code=exc.code, headers={"Retry-After": str(exc.retry_after)}
    )


# Exceptions that mean a backing service (PostgreSQL, Redis, dagster-webserver) could not be
# reached. PoolTimeout and PoolClosed are psycopg OperationalErrors; httpx.TransportError
# covers refused connections and timeouts talking to dagster-webserver.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    dispatch.Unavailable,
    psycopg.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
# The same from libraries the API does not import itself (Dagster's storage), by class name.
_UNAVAILABLE_NAMES = frozenset(
    {
        "sqlalchemy.exc.OperationalError",
        "psycopg2.OperationalError",
    }
)


def is_unavailable(exc: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, means a backing service is unreachable."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UNAVAILABLE):
            return True
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500:
            return True
        if any(f"{c.__module__}.{c.__qualname__}" in _UNAVAILABLE_NAMES for c in type(exc).__mro__):
            return True
        exc = exc.__cause__
    return False


def _unavailable_response(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: backend unavailable: %r", request.method, request.url.path, exc)
    return error_response(
        503,
        "the task service cannot reach its database, broker or run orchestrator; try again shortly",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """A backing service down: 503 so clients retry, without internals in the message."""
    if is_unavailable(exc):
        return _unavailable_response(request, exc)
    # An HTTPStatusError below 500 (dagster-webserver refusing a request) is a bug here.
    return _internal_handler(request, exc)


def _internal_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: logged with its traceback here, a generic message to the client."""
    if is_unavailable(exc):
        # Raised from an unreachable service further down (e.g. Dagster's storage).
        return _unavailable_response(request, exc)
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the common shape."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(dispatch.Conflict, _conflict_handler)
    app.add_exception_handler(idempotency.IdempotencyConflict, _idempotency_conflict_handler)
    app.add_exception_handler(limits.Refused, _refused_handler)
    for exc_type in (*UNAVAILABLE, httpx.HTTPStatusError):
        app.add_exception_handler(exc_type, _unavailable_handler)
    # Exception goes to Starlette's outermost ServerErrorMiddleware, so it also catches
    # failures in middleware; that middleware re-raises afterwards for the server's log.
    app.add_exception_handler(Exception, _internal_handler)


# OpenAPI: documenting "4XX" also stops FastAPI from advertising a 422 it never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Client error in the common error shape."},
    503: {
        "model": ErrorResponse,
        "description": "Database, broker or Dagster unavailable; retry after Retry-After.",
    },
}
