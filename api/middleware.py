"""Pure ASGI middleware bounding request bodies, before and while they are read."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from moviegen_dagster.logs import bind

# Requests on one task: their log records carry its id.
_TASK_PATH = re.compile(r"^/api/v1/tasks/([0-9a-fA-F-]{36})(/|$)")


class _BodyTooLarge(Exception):
    """Raised from `receive` once the streamed body passes the limit."""


class BodyLimitMiddleware:
    """Answer 413 when Content-Length exceeds the limit (nothing read) or a chunked body passes it.

    Pure ASGI rather than BaseHTTPMiddleware so the body is never buffered: each chunk is counted
    as the application pulls it, and the first chunk past the limit stops the reading. Whatever
    the application made of the aborted read (FastAPI turns it into a 400) is discarded and the
    client gets the 413 instead.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
                if length < 0 or len(declared) > 1:
                    raise ValueError(declared)
            except ValueError:
                await self._reply(scope, receive, send, 400, "invalid Content-Length header")
                return
            if length > limit:
                await self._reply(scope, receive, send, 413, self._too_large(limit))
                return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Once over the limit, the application's own answer to the broken read is dropped.
            if exceeded:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reply(scope, receive, send, 413, self._too_large(limit))

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"request body larger than {limit} bytes"

    @staticmethod
    async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        # Connection: close, since the unread rest of the body cannot be skipped on a keep-alive.
        response = error_response(status, message, headers={"Connection": "close"})
        await response(scope, receive, send)


class TaskLogContextMiddleware:
    """Binds the task id of `/api/v1/tasks/{task_id}/...` requests to their log records."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _TASK_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        # Routes run in the threadpool with a copy of this context, so they inherit the binding.
        with bind(task_id=match.group(1).lower()):
            await self.app(scope, receive, send)
