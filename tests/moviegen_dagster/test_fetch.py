"""Safe fetching of URL inputs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moviegen_dagster.fetch import Allowlist, FetchError, fetch

LOCAL = Allowlist.parse("127.0.0.1")


class Handler(BaseHTTPRequestHandler):
    """Routes that behave well and badly."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, ctype: str = "image/jpeg", length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ok.jpg":
            self._send(b"\xff\xd8" + b"x" * 100)
        elif self.path == "/page":
            self._send(b"<html>", ctype="text/html")
        elif self.path == "/big":
            self._send(b"x" * 5000)
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 1000)
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/to-internal":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/to-ok":
            self.send_response(302)
            self.send_header("Location", "/ok.jpg")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_allowlisted_server_is_fetched_and_redirects_are_followed(server: str) -> None:
    got = fetch(f"{server}/to-ok", "style_guide", LOCAL, 1000, accept=("image/",))
    assert got.content.startswith(b"\xff\xd8") and got.content_type == "image/jpeg"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "http://127.0.0.1:1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://0x7f000001/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://user:pw@127.0.0.1/x",
    ],
)
def test_refused_destinations_name_the_input(url: str) -> None:
    with pytest.raises(FetchError, match=r"^storyboard_images\[0\]"):
        fetch(url, "storyboard_images[0]", Allowlist(), 1000, timeout=5)


def test_redirect_to_internal_host_is_refused(server: str) -> None:
    with pytest.raises(FetchError, match="non-public"):
        fetch(f"{server}/to-internal", "style_guide", LOCAL, 1000)


def test_size_type_and_time_caps(server: str) -> None:
    with pytest.raises(FetchError, match="over the 1000 limit"):
        fetch(f"{server}/big", "ref", LOCAL, 1000)
    with pytest.raises(FetchError, match="more than 1000 bytes"):
        fetch(f"{server}/big-chunked", "ref", LOCAL, 1000)
    with pytest.raises(FetchError, match="content type"):
        fetch(f"{server}/page", "ref", LOCAL, 1000, accept=("image/",))
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch(f"{server}/slow", "ref", LOCAL, 1000, timeout=1.0)
    assert time.monotonic() - started < 3.5
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{server}/missing", "ref", LOCAL, 1000)


def test_connection_is_pinned_to_the_checked_address(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that re-resolves elsewhere after the check (DNS rebinding) is never re-resolved."""
    port = int(server.rsplit(":", 1)[1])
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    calls: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: str, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host != "assets.test":
            return real(host, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(host)
        ip = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch(f"http://assets.test:{port}/ok.jpg", "ref", LOCAL, 1000)
    assert got.content.startswith(b"\xff\xd8")
    assert calls == ["assets.test"]
