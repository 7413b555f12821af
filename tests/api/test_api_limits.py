"""Request body limits: 413 from Content-Length before reading, and while a chunked body streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import uvicorn
from api_helpers import MAX_BODY_BYTES, Project, assert_error, submission
from fastapi.testclient import TestClient

from api.main import create_app
from api.middleware import BodyLimitMiddleware
from moviegen_dagster.settings import Settings

URL = "/api/v1/tasks/submit"


def _oversized(project_id: str) -> bytes:
    body = submission(project_id, task_data={"pad": "x" * (MAX_BODY_BYTES + 10)})
    return json.dumps(body).encode()


def test_content_length_over_limit_is_413(client: TestClient, project: Project) -> None:
    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=_oversized(project.project_id), headers=headers)
    body = assert_error(resp, 413, "payload_too_large")
    assert str(MAX_BODY_BYTES) in body["error"]["message"]


def test_limit_applies_before_authentication(client: TestClient, project: Project) -> None:
    resp = client.post(URL, content=_oversized(project.project_id))
    assert_error(resp, 413, "payload_too_large")


def test_chunked_body_over_limit_is_413(client: TestClient, project: Project) -> None:
    payload = _oversized(project.project_id)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 16_384):
            yield payload[start : start + 16_384]

    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=chunks(), headers=headers)
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "payload_too_large")


def test_body_at_limit_is_read(client: TestClient, project: Project) -> None:
    # Exactly at the limit is allowed through (here it fails validation instead: too big a string).
    base = json.dumps(submission(project.project_id, task_data={"pad": ""})).encode()
    pad = MAX_BODY_BYTES - len(base)
    payload = json.dumps(submission(project.project_id, task_data={"pad": "x" * pad})).encode()
    assert len(payload) == MAX_BODY_BYTES
    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=payload, headers=headers)
    assert_error(resp, 400, "validation_error", "task_data.pad")


def test_invalid_content_length_is_400() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("must not be reached")

    async def receive() -> dict[str, Any]:  # pragma: no cover
        raise AssertionError("must not read the body")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"x")]}
    asyncio.run(BodyLimitMiddleware(app, 10)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "bad_request"


def test_streaming_stops_reading_past_the_limit() -> None:
    """The middleware stops pulling chunks at the first one past the limit."""
    pulled = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:  # an application that would read forever
            await receive()

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodyLimitMiddleware(app, 1_000)(scope, receive, send))
    assert pulled == 11
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


@pytest.fixture(scope="module")
def live_server(settings: Settings, dispatcher: Any) -> Iterator[int]:
    """The app under a real uvicorn, for what TestClient cannot do (a body sent in chunks)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(
        create_app(settings, dispatcher=dispatcher),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_chunked_upload_is_cut_off_over_a_real_socket(live_server: int, project: Project) -> None:
    """413 arrives while the client is still sending: the server stopped reading."""
    with socket.create_connection(("127.0.0.1", live_server), timeout=5) as conn:
        conn.sendall(
            (
                f"POST {URL} HTTP/1.1\r\nHost: test\r\nX-API-Key: {project.key}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"x" * 65_536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent = 0
        conn.settimeout(0.05)
        answer = b""
        # Keep sending up to 16x the limit; the answer must come long before that.
        while sent < 16 * MAX_BODY_BYTES and b"\r\n\r\n" not in answer:
            try:
                conn.sendall(framed)
                sent += len(chunk)
            except OSError:
                break  # the server closed the connection after answering
            with contextlib.suppress(TimeoutError):
                answer += conn.recv(65_536)
        conn.settimeout(5)
        while b"\r\n\r\n" not in answer:
            data = conn.recv(65_536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * MAX_BODY_BYTES
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert b"payload_too_large" in body or b"content-length" in head.lower()
