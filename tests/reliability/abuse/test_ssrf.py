"""SSRF: URL inputs (fetched by the worker) and callback URLs (checked at submit and at every
delivery) never reach loopback, private, link-local or metadata addresses, and hostile servers
are cut off by the time and size caps. Function level with real sockets, plus one task end to
end through the running API and a worker."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from moviegen_dagster.fetch import Allowlist, FetchError, IPAddress, check_url_static, fetch
from moviegen_dagster.webhooks import Sender, generate_secret
from tests.conftest import RunningStack
from tests.reliability.abuse.conftest import Project, new_project

pytestmark = pytest.mark.reliability

NONE = Allowlist()


class Trap:
    """A real HTTP server that records every request: a refused URL must never reach it."""

    def __init__(self, host: str = "127.0.0.1", handler: Callable[[Any], None] | None = None):
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hits.append(self.path)
                if handler is not None:
                    handler(self)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"\xff\xd8\xff\xd9")

            do_POST = do_GET

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients cut off by the caps close mid-answer: expected here

        self.httpd = Server((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    """A loopback server the refused URLs point at."""
    server = Trap()
    yield server
    server.close()


# Every form below names a loopback, private, link-local, metadata or otherwise internal
# destination; {p} is the trap's port, so a URL that slipped through would be recorded.
HOSTILE = [
    "http://127.0.0.1:{p}/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{p}/x",
    "http://0x7f000001:{p}/x",
    "http://2130706433:{p}/x",
    "http://0177.0.0.1:{p}/x",
    "http://127.1:{p}/x",
    "http://0:{p}/x",
    "http://0.0.0.0:{p}/x",
    "http://localhost:{p}/x",
    "http://localhost.:{p}/x",
    "http://127.0.0.1.:{p}/x",
    "http://LOCALHOST:{p}/x",
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{p}/x",  # fullwidth localhost
    "http://127\u30020\u30020\u30021:{p}/x",  # ideographic full stops
    "http://127\u20240\u20240\u20241:{p}/x",  # one-dot leader
    "http://10.0.0.1/x",
    "http://10.255.255.254/x",
    "http://172.16.0.1/x",
    "http://172.31.255.254/x",
    "http://192.168.0.1/x",
    "http://100.64.0.1/x",
    "http://224.0.0.1/x",
    "http://[fc00::1]/x",
    "http://[fd12:3456::1]/x",
    "http://[fe80::1]/x",
    "http://[fe80::1%25lo]/x",
    "http://[::ffff:127.0.0.1]:{p}/x",
    "http://[::ffff:7f00:1]:{p}/x",
    "http://[::ffff:10.0.0.1]/x",
    "http://[::127.0.0.1]:{p}/x",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]/x",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/x",  # 6to4 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x",  # Teredo, client 127.0.0.1
    "http://[::]:{p}/x",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{p}/_GET%20/",
    "ftp://127.0.0.1:{p}/x",
    "dict://127.0.0.1:{p}/x",
    "http://good@127.0.0.1:{p}/x",
    "http://good:pw@127.0.0.1:{p}/x",
    "http://good.example.com@127.0.0.1:{p}/x",
    "http://%31%32%37.0.0.1:{p}/x",
    "http://127.0.0.1\\@example.com:{p}/x",
    "http://[zz]/x",
    "http://127.0.0.1:99999/x",
    "http:///x",
]


def hostile(trap: Trap) -> list[str]:
    """The hostile URLs aimed at the trap's port."""
    return [u.replace("{p}", str(trap.port)) for u in HOSTILE]


def test_fetch_refuses_internal_destinations_naming_the_input(trap: Trap) -> None:
    """Every form is refused before any connection, with the input's name first."""
    for url in hostile(trap):
        with pytest.raises(FetchError, match=r"^reference_images\[0\]: ") as info:
            fetch(url, "reference_images[0]", NONE, 1000, timeout=5)
        assert "Traceback" not in str(info.value), url
    assert trap.hits == []


def test_static_check_refuses_literal_internal_destinations(trap: Trap) -> None:
    """At submit time (no DNS) every literal internal address and bad scheme is refused."""
    for url in hostile(trap):
        with pytest.raises(FetchError, match=r"^callback_url: "):
            check_url_static(url, NONE, "callback_url")
    # Public literals and names pass the static check (names are checked at use).
    for url in ("https://93.184.216.34/x", "https://hooks.example.com/x", "http://[2606:4700::1]/"):
        check_url_static(url, NONE, "callback_url")


def test_sender_refuses_internal_callbacks_without_connecting(trap: Trap) -> None:
    """The webhook sender checks again at delivery; nothing reaches the trap."""
    sender = Sender(generate_secret(), NONE, timeout=5)
    for url in hostile(trap):
        outcome = sender.send(url, "msg_test", {"event": "task.completed"})
        assert not outcome.ok and outcome.status_code is None, url
        assert outcome.error and "callback_url" in outcome.error, (url, outcome)
    assert trap.hits == []


CALLBACKS_REFUSED_AT_SUBMIT = [
    u
    for u in HOSTILE
    # Names (not literals) are only resolvable at use, and the sender checks them there.
    if "localhost" not in u.lower() and "\uff4c" not in u
]


def test_submit_refuses_internal_callback_urls(
    abuse_client: TestClient, abuse_conn: Any, trap: Trap
) -> None:
    """A callback_url aimed inside answers 400 naming callback_url; nothing is stored."""
    project = new_project(abuse_conn)
    for url in [u.replace("{p}", str(trap.port)) for u in CALLBACKS_REFUSED_AT_SUBMIT]:
        resp = abuse_client.post(
            "/api/v1/tasks/submit",
            json={
                "project_id": project.project_id,
                "task_type": "generate_image",
                "task_data": {"character_description": "A detective"},
                "callback_url": url,
            },
            headers=project.headers,
        )
        assert resp.status_code == 400, (url, resp.text)
        assert resp.json()["error"]["field"] == "callback_url", (url, resp.text)
        assert "callback_url" in resp.json()["error"]["message"]
    stored = abuse_conn.execute(
        "SELECT count(*) AS n FROM moviegen.tasks WHERE project_id = %s", [project.project_id]
    ).fetchone()
    assert stored["n"] == 0


def _redirector(location: str) -> Callable[[Any], None]:
    def handler(req: Any) -> None:
        req.send_response(302)
        req.send_header("Location", location)
        req.send_header("Content-Length", "0")
        req.end_headers()

    return handler


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{p}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{p}/secret",
        "http://0x7f000002:{p}/secret",
        "file:///etc/passwd",
        "gopher://127.0.0.2:{p}/_x",
        "http://user@127.0.0.2:{p}/secret",
    ],
)
def test_redirect_to_an_internal_host_is_refused(target: str) -> None:
    """The first hop is allowed (allowlisted 127.0.0.1); its redirect inside is not."""
    inner = Trap("127.0.0.2")
    outer = Trap("127.0.0.1", _redirector(target.replace("{p}", str(inner.port))))
    try:
        with pytest.raises(FetchError, match=r"^style_guide: "):
            fetch(f"{outer.url}/start", "style_guide", Allowlist.parse("127.0.0.1"), 1000)
        assert outer.hits == ["/start"] and inner.hits == []
    finally:
        outer.close()
        inner.close()


class FaultInjectingResolver:
    """DNS double for rebinding: a public answer when checked, loopback on any later query."""

    def __init__(self, name: str, public: str, internal: str) -> None:
        self.name = name
        self.answers = [public]
        self.internal = internal
        self.queries: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        """The fetch.Resolver interface."""
        import ipaddress

        return [ipaddress.ip_address(a) for a in self._next(host)]

    def _next(self, host: str) -> list[str]:
        assert host == self.name, host
        self.queries.append(host)
        return [self.answers.pop(0)] if self.answers else [self.internal]

    def getaddrinfo(self, real: Callable[..., Any]) -> Callable[..., Any]:
        """A socket.getaddrinfo that answers for `name` and defers to the real one otherwise."""

        def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
            if host != self.name:
                return list(real(host, port, *args, **kwargs))
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0)))
                for a in self._next(host)
            ]

        return fake


class FaultInjectingConnector:
    """socket.create_connection double: records every destination and refuses public ones at
    once (there is no network), while loopback connects for real (so the trap would see it)."""

    def __init__(self, real: Callable[..., socket.socket]) -> None:
        self.real = real
        self.destinations: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        """Record, then refuse or connect."""
        self.destinations.append((str(address[0]), int(address[1])))
        if not str(address[0]).startswith("127."):
            raise ConnectionRefusedError(f"no route to {address[0]} in tests")
        return self.real(address, *args, **kwargs)


def test_dns_rebinding_connects_to_the_checked_address(
    trap: Trap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves public at check time and to loopback afterwards: the fetcher asks
    once and connects to the public address it checked, never to the trap on loopback."""
    resolver = FaultInjectingResolver("rebind.test", "93.184.216.34", "127.0.0.1")
    connector = FaultInjectingConnector(socket.create_connection)
    monkeypatch.setattr(socket, "create_connection", connector)
    with pytest.raises(FetchError, match=r"^storyboard_images\[0\]: could not fetch"):
        fetch(
            f"http://rebind.test:{trap.port}/frame.jpg",
            "storyboard_images[0]",
            NONE,
            1000,
            timeout=5,
            resolver=resolver,
        )
    assert resolver.queries == ["rebind.test"]
    assert connector.destinations == [("93.184.216.34", trap.port)]
    assert trap.hits == []


def test_dns_rebinding_of_a_callback_connects_to_the_checked_address(
    trap: Trap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same for the webhook sender, with the resolver injected at the socket layer."""
    resolver = FaultInjectingResolver("hooks.rebind.test", "93.184.216.34", "127.0.0.1")
    connector = FaultInjectingConnector(socket.create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", resolver.getaddrinfo(socket.getaddrinfo))
    monkeypatch.setattr(socket, "create_connection", connector)
    sender = Sender(generate_secret(), NONE, timeout=5)
    outcome = sender.send(f"http://hooks.rebind.test:{trap.port}/hook", "msg_x", {"a": 1})
    assert not outcome.ok and outcome.error and "ConnectError" in outcome.error, outcome
    assert resolver.queries == ["hooks.rebind.test"]
    assert connector.destinations == [("93.184.216.34", trap.port)]
    assert trap.hits == []


def test_a_name_resolving_inside_is_refused_at_use(trap: Trap) -> None:
    """A name whose answer is loopback is refused by fetch and by the sender (no allowlist)."""
    resolver = FaultInjectingResolver("inside.test", "127.0.0.1", "127.0.0.1")
    with pytest.raises(FetchError, match=r"^reference_images\[1\]: .*non-public"):
        fetch(
            f"http://inside.test:{trap.port}/x", "reference_images[1]", NONE, 100, resolver=resolver
        )
    assert trap.hits == []


def _drip(interval: float, headers_first: bool) -> Callable[[Any], None]:
    """A handler that trickles its answer, one byte per `interval` seconds, without end."""

    def handler(req: Any) -> None:
        with contextlib.suppress(OSError):
            if headers_first:
                req.send_response(200)
                req.send_header("Content-Type", "image/jpeg")
                req.end_headers()
                req.wfile.flush()
                while True:
                    req.wfile.write(b"x")
                    req.wfile.flush()
                    time.sleep(interval)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" * 1000:
                req.wfile.write(bytes([byte]))
                req.wfile.flush()
                time.sleep(interval)

    return handler


def _endless(declared: int | None) -> Callable[[Any], None]:
    """A handler that streams zeros for ever (optionally declaring a multi-GB length)."""

    def handler(req: Any) -> None:
        with contextlib.suppress(OSError):
            req.send_response(200)
            req.send_header("Content-Type", "image/jpeg")
            if declared is not None:
                req.send_header("Content-Length", str(declared))
            req.end_headers()
            block = b"\0" * 65536
            while True:
                req.wfile.write(block)

    return handler


LOCAL = Allowlist.parse("127.0.0.1")


@pytest.mark.parametrize("headers_first", [True, False], ids=["body-drip", "header-drip"])
def test_slow_drip_servers_are_cut_off_by_the_time_cap(headers_first: bool) -> None:
    """A byte every 0.5 s never trips a per-read timeout; the whole-fetch cap still holds."""
    server = Trap(handler=_drip(0.5, headers_first))
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"^voice: .*timed out"):
            fetch(f"{server.url}/voice.wav", "voice", LOCAL, 10_000_000, timeout=2.0)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert 1.5 <= elapsed < 3.5, elapsed


def test_slow_drip_callback_receiver_is_cut_off() -> None:
    """The webhook sender's attempt is time-boxed the same way."""
    server = Trap(handler=_drip(0.5, headers_first=False))
    try:
        sender = Sender(generate_secret(), LOCAL, timeout=2.0)
        started = time.monotonic()
        outcome = sender.send(f"{server.url}/hook", "msg_drip", {"a": 1})
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert not outcome.ok and outcome.error and "timed out" in outcome.error, outcome
    assert elapsed < 3.5, elapsed


@pytest.mark.parametrize("declared", [None, 8 * 2**30], ids=["endless", "declared-8GiB"])
def test_endless_servers_are_cut_off_by_the_size_cap(declared: int | None) -> None:
    """An endless stream stops at the size cap, with memory bounded by that cap."""
    server = Trap(handler=_endless(declared))
    proc = psutil.Process()
    try:
        before = proc.memory_info().rss
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"^storyboard_images\[2\]: .*(more than|over the)"):
            fetch(f"{server.url}/f.jpg", "storyboard_images[2]", LOCAL, 2_000_000, timeout=20)
        elapsed = time.monotonic() - started
        grown = proc.memory_info().rss - before
    finally:
        server.close()
    assert elapsed < 10, elapsed
    assert grown < 64 * 2**20, grown


def test_compressed_answers_are_refused() -> None:
    """A server that compresses although asked for identity could inflate past the cap."""

    def gzip_handler(req: Any) -> None:
        import gzip

        body = gzip.compress(b"\0" * 5_000_000)
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Encoding", "gzip")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    server = Trap(handler=gzip_handler)
    try:
        with pytest.raises(FetchError, match=r"^ref: compressed"):
            fetch(f"{server.url}/bomb.jpg", "ref", LOCAL, 1_000_000)
    finally:
        server.close()


def test_refused_input_fails_the_task_end_to_end(
    running_stack: RunningStack, stack_project: Project
) -> None:
    """Through the running API and a worker: a reference image on a non-allowlisted loopback
    address (the stack allows only 127.0.0.1) fails the task naming the input; an internal
    callback URL is refused at submit naming callback_url."""
    inner = Trap("127.0.0.2")
    try:
        with httpx.Client(
            base_url=running_stack.api_url, headers=stack_project.headers, timeout=30
        ) as client:
            body = {
                "project_id": stack_project.project_id,
                "task_type": "generate_image",
                "task_data": {
                    "character_description": "A detective",
                    "reference_images": [f"http://0x7f000002:{inner.port}/ref.jpg"],
                    "resolution": "64x64",
                },
            }
            refused = client.post(
                "/api/v1/tasks/submit",
                json={**body, "callback_url": "http://[::ffff:169.254.169.254]/hook"},
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["field"] == "callback_url"
            resp = client.post("/api/v1/tasks/submit", json=body)
            assert resp.status_code == 202, resp.text
            task_id = resp.json()["task_id"]
            doc = running_stack.wait_terminal(client, task_id, timeout=120)
    finally:
        inner.close()
    assert doc["status"] == "failed", doc
    assert doc["error"].startswith("reference_images[0]: "), doc
    assert "non-public" in doc["error"], doc
    assert inner.hits == []


@pytest.mark.parametrize(
    ("task_type", "data", "field"),
    [
        (
            "generate_image",
            {"character_description": "x", "reference_images": ["http://good@127.0.0.1/x.jpg"]},
            "task_data.reference_images[0]",
        ),
        (
            "generate_image",
            {"character_description": "x", "style_guide": "http://a:b@example.com/s.jpg"},
            "task_data.style_guide",
        ),
        (
            "generate_video",
            {"scene_description": "x", "storyboard_images": ["http://exa\u0001mple.com/f.jpg"]},
            "task_data.storyboard_images[0]",
        ),
        (
            "process_audio",
            {"text": "Hi.", "character_voice_profile": "http://[zz]/voice.wav"},
            "task_data.character_voice_profile",
        ),
        (
            "process_audio",
            {"text": "Hi.", "character_voice_profile": "http://%31%32%37.0.0.1/v.wav"},
            "task_data.character_voice_profile",
        ),
    ],
)
def test_url_inputs_with_credentials_or_bad_hosts_are_refused_at_submit(
    abuse_client: TestClient, abuse_conn: Any, task_type: str, data: dict[str, Any], field: str
) -> None:
    """What needs no DNS is refused at once, naming the input (destinations at fetch time)."""
    project = new_project(abuse_conn)
    resp = abuse_client.post(
        "/api/v1/tasks/submit",
        json={"project_id": project.project_id, "task_type": task_type, "task_data": data},
        headers=project.headers,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["field"] == field, resp.text
    assert resp.json()["error"]["message"].startswith(field), resp.text
