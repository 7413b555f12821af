"""Hostile request bodies against the real API process: clear 4xx, nothing stored, bounded memory.

Large bodies go over raw sockets so the test controls exactly what is sent and when it stops:
a 50 MB body declared with Content-Length, and one sent chunked without a length.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import RunningStack
from tests.reliability.abuse.conftest import Project

pytestmark = pytest.mark.reliability

SUBMIT = "/api/v1/tasks/submit"
FIFTY_MB = 50 * 1024 * 1024
CHUNK = 64 * 1024
# Generous: the API may keep what it imported while answering; a buffered 50 MB body would not fit.
RSS_BOUND = 150 * 1024 * 1024


def _body(project: Project, task_data: str = '{"character_description":"x"}', **extra: str) -> str:
    """A submission with raw JSON fragments spliced in (so invalid JSON can be expressed)."""
    fields = {
        "project_id": json.dumps(project.project_id),
        "task_type": '"generate_image"',
        "task_data": task_data,
        **extra,
    }
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


def _cases(project: Project) -> list[tuple[str, str, bytes, int, str, str]]:
    """(name, content type, body, status, code, field)."""
    deep_list = "[" * 10_000 + "]" * 10_000
    deep_obj = '{"a":' * 10_000 + "1" + "}" * 10_000
    huge_int = "1" + "0" * 5_000  # 10**5000: past Python's 4,300-digit conversion limit
    js = "application/json"
    return [
        ("malformed", js, b'{"project_id": "x", "task_type":', 400, "invalid_json", "body"),
        ("trailing garbage", js, _body(project).encode() + b"}}", 400, "invalid_json", "body"),
        ("not utf-8", js, b'{"project_id": "\xff\xfe"}', 400, "invalid_json", "body"),
        ("empty", js, b"", 400, "validation_error", "body"),
        ("array", js, b"[1, 2, 3]", 400, "validation_error", "body"),
        (
            "text/plain",
            "text/plain",
            _body(project).encode(),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "form",
            "application/x-www-form-urlencoded",
            b"project_id=x",
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        ("deep list", js, deep_list.encode(), 400, "invalid_json", "body"),
        ("deep task_data", js, _body(project, deep_obj).encode(), 400, "invalid_json", "body"),
        (
            "NaN",
            js,
            _body(project, '{"character_description":"x","seed":NaN}').encode(),
            400,
            "validation_error",
            "task_data.seed",
        ),
        (
            "Infinity",
            js,
            _body(project, metadata='{"n":-Infinity}').encode(),
            400,
            "validation_error",
            "metadata.n",
        ),
        (
            "1e400",
            js,
            _body(project, priority="1e400").encode(),
            400,
            "validation_error",
            "priority",
        ),
        (
            "1e400 in task_data",
            js,
            _body(project, '{"character_description":"x","seed":1e400}').encode(),
            400,
            "validation_error",
            "task_data.seed",
        ),
        ("10**5000", js, _body(project, priority=huge_int).encode(), 400, "invalid_json", "body"),
        (
            "10**5000 in metadata",
            js,
            _body(project, metadata=f'{{"n":{huge_int}}}').encode(),
            400,
            "invalid_json",
            "body",
        ),
        (
            "seed 2**64",
            js,
            _body(project, f'{{"character_description":"x","seed":{2**64}}}').encode(),
            400,
            "validation_error",
            "task_data.seed",
        ),
    ]


@dataclass
class RawAnswer:
    """What came back over a raw connection, and how much of the body had been sent."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent: int


def _read_answer(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data or not _complete(data):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no complete answer in time: {data[:200]!r}"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def send_raw(api_url: str, key: str, total: int, chunked: bool, timeout: float = 60) -> RawAnswer:
    """POST `total` bytes of JSON-looking filler; stop sending as soon as the server answers."""
    parts = urlsplit(api_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (
        f"POST {SUBMIT} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + timeout
    filler = b'{"a":"' + b"x" * (CHUNK - 6)
    sent = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(head)
        while sent < total:
            # The server may answer before reading (a declared length over the limit): stop.
            readable, _, _ = select.select([sock], [], [], 0.2 if sent == 0 else 0)
            if readable:
                break
            piece = filler[: min(CHUNK, total - sent)]
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            if chunked:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"0\r\n\r\n")
        status, headers, body = _read_answer(sock, deadline)
    return RawAnswer(status, headers, body, sent)


def _rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def _assert_error(
    status: int, body: bytes, want: int, code: str, field: str | None, name: str = ""
) -> None:
    doc = json.loads(body)
    assert status == want, (name, status, doc)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "field"}, doc
    assert doc["error"]["code"] == code and doc["error"]["field"] == field, doc
    assert "Traceback" not in doc["error"]["message"], doc


def test_hostile_bodies_get_clear_4xx_and_bounded_memory(
    running_stack: RunningStack, stack_project: Project, api_process: psutil.Process
) -> None:
    """Malformed, mistyped, deep, non-finite, huge and 50 MB bodies: 400/413/415, nothing
    stored, and the API's resident memory stays within RSS_BOUND of where it started."""
    headers = stack_project.headers
    with httpx.Client(base_url=running_stack.api_url, timeout=60) as client:
        # Warm up the code paths a first request imports, so the baseline is fair.
        client.post(SUBMIT, content=b"{", headers={**headers, "Content-Type": "application/json"})
        rss_before = _rss(api_process)
        peak = rss_before
        for name, ctype, body, status, code, field in _cases(stack_project):
            resp = client.post(SUBMIT, content=body, headers={**headers, "Content-Type": ctype})
            _assert_error(resp.status_code, resp.content, status, code, field, name)
            peak = max(peak, _rss(api_process))

        limit_answers: list[RawAnswer] = []
        for _ in range(3):
            for chunked in (False, True):
                got = send_raw(running_stack.api_url, stack_project.key, FIFTY_MB, chunked)
                _assert_error(got.status, got.body, 413, "payload_too_large", None)
                limit_answers.append(got)
                peak = max(peak, _rss(api_process))
        rss_after = _rss(api_process)

        listing = client.get(f"/api/v1/projects/{stack_project.project_id}/tasks", headers=headers)
        assert listing.status_code == 200 and listing.json()["total"] == 0, listing.text
        # The API still serves normal requests afterwards.
        assert client.get("/api/v1/health").status_code in (200, 503)

    declared = [
        a for a, chunked in zip(limit_answers, [False, True] * 3, strict=True) if not chunked
    ]
    streamed = [a for a, chunked in zip(limit_answers, [False, True] * 3, strict=True) if chunked]
    # A declared length over the limit is refused before a single body byte is read.
    assert all(a.sent == 0 for a in declared), [a.sent for a in declared]
    # A chunked body is cut off soon after the limit, never read to its end.
    assert all(a.sent < FIFTY_MB for a in streamed), [a.sent for a in streamed]
    print(
        f"\napi rss: before {rss_before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
        f"after {rss_after / 2**20:.1f} MiB; chunked bytes sent before the 413: "
        f"{[a.sent for a in streamed]}"
    )
    assert peak - rss_before < RSS_BOUND, (rss_before, peak)
    assert rss_after - rss_before < RSS_BOUND, (rss_before, rss_after)
