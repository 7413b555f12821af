"""Task callbacks: outbox, schedule, signing and URL rules, against real PostgreSQL and HTTP."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from standardwebhooks import Webhook

from api.schemas import TaskStatus
from moviegen_dagster import store, webhooks
from moviegen_dagster.fetch import Allowlist, FetchError
from moviegen_dagster.webhooks import (
    MAX_ATTEMPTS,
    RETRY_SCHEDULE,
    Sender,
    deliver_due,
    enqueue_terminal_event,
)
from tests.pg_support import throwaway_database

SECRET = webhooks.generate_secret()
LOCAL = Allowlist.parse("127.0.0.1")
TIMEOUT = 0.5  # per attempt; the slow receivers below take far longer

Conn = psycopg.Connection[dict[str, Any]]


# -- a receiver that can misbehave ----------------------------------------------------------


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1; `status`/`behaviour` choose how it answers."""

    port: int = 0
    status: int = 200
    behaviour: str = "respond"  # respond | hang (answer after hang_s) | drip (headers trickle)
    hang_s: float = 3.0
    location: str = ""
    requests: list[Received] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        if not self.port:
            # Reserve a port that is closed until start(): "the receiver is down".
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]

    @property
    def url(self) -> str:
        """Where callbacks should go."""
        return f"http://127.0.0.1:{self.port}/hooks/task"

    def start(self) -> Receiver:
        """Start answering on the reserved port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body))
                try:
                    if receiver.behaviour == "hang":
                        time.sleep(receiver.hang_s)
                    if receiver.behaviour == "drip":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        for _ in range(int(receiver.hang_s / 0.1)):
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            time.sleep(0.1)
                        return
                    self.send_response(receiver.status)
                    if receiver.location:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up first, as it should

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class FakeClock:
    """The scheduling clock, moved by hand so hours of retries take no time."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def now(self) -> float:
        """Current fake time."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.t += seconds


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A throwaway database with the moviegen schema and the outbox, dropped afterwards."""
    with throwaway_database("mg_test_webhooks") as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """A connection like the pool's (dict rows, not autocommit), on emptied tables."""
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        c.execute("TRUNCATE moviegen.webhook_outbox, moviegen.tasks CASCADE")
        c.commit()
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that is up and answers 200."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def sender() -> Sender:
    """A sender allowed to reach 127.0.0.1."""
    return Sender(SECRET, LOCAL, timeout=TIMEOUT)


# -- helpers ----------------------------------------------------------------------------------


def new_task(conn: Conn, callback_url: str | None) -> store.Row:
    """A stored queued task."""
    row = store.insert_task(
        conn,
        store.NewTask(
            project_id="proj_hooks",
            task_type="generate_image",
            priority=5,
            task_data={"character_description": "x"},
            metadata={},
            callback_url=callback_url,
            partition_key="proj_hooks/unassigned",
        ),
        estimated=60,
    )
    conn.commit()
    return row


def finish(conn: Conn, row: store.Row, status: str = "completed") -> tuple[store.Row, bool]:
    """Move a task to a run state and enqueue its event in that transaction (the wiring)."""
    error = {"code": "run_failed", "message": "boom"} if status == "failed" else None
    new = store.apply_run_state(conn, row["task_id"], "run-1", status, int(row["attempt"]), error)
    assert new is not None
    queued = enqueue_terminal_event(conn, new, TaskStatus.from_row(new).model_dump(mode="json"))
    conn.commit()
    return new, queued


def outbox(conn: Conn) -> list[dict[str, Any]]:
    """Every outbox row."""
    rows = conn.execute("SELECT * FROM moviegen.webhook_outbox ORDER BY id").fetchall()
    conn.commit()
    return rows


def verified(received: Received) -> dict[str, Any]:
    """The payload, after the Standard Webhooks signature check."""
    payload: dict[str, Any] = Webhook(SECRET).verify(received.body, received.headers)
    return payload


# -- enqueueing -------------------------------------------------------------------------------


def test_terminal_task_enqueues_one_event(conn: Conn) -> None:
    row = new_task(conn, "https://example.com/hook")
    done, queued = finish(conn, row, "completed")
    assert queued
    document = TaskStatus.from_row(done).model_dump(mode="json")
    # Twice, and with another terminal event for the same attempt: still one row.
    assert not enqueue_terminal_event(conn, done, document)
    assert not enqueue_terminal_event(conn, {**done, "status": "cancelled"}, document)
    conn.commit()
    rows = outbox(conn)
    assert len(rows) == 1
    assert rows[0]["event"] == "task.completed"
    assert rows[0]["webhook_id"].startswith("msg_")
    assert rows[0]["payload"] == {**document, "event": "task.completed"}
    assert rows[0]["attempts"] == 0 and rows[0]["delivered_at"] is None


def test_no_callback_url_and_non_terminal_enqueue_nothing(conn: Conn) -> None:
    _, queued = finish(conn, new_task(conn, None), "failed")
    assert not queued
    retrying, queued = finish(conn, new_task(conn, "https://example.com/h"), "processing")
    assert retrying["status"] == "processing" and not queued
    assert outbox(conn) == []


def test_enqueue_is_rolled_back_with_the_status_change(conn: Conn) -> None:
    row = new_task(conn, "https://example.com/hook")
    new = store.apply_run_state(conn, row["task_id"], "run-1", "cancelled", 1, None)
    assert new is not None
    assert enqueue_terminal_event(conn, new, TaskStatus.from_row(new).model_dump(mode="json"))
    conn.rollback()
    assert outbox(conn) == []


def test_a_manual_retry_gets_its_own_terminal_event(conn: Conn) -> None:
    failed, _ = finish(conn, new_task(conn, "https://example.com/hook"), "failed")
    reopened = store.reopen_for_retry(conn, failed["task_id"])
    assert reopened is not None
    finish(conn, reopened, "completed")
    assert [(r["event"], r["task_attempt"]) for r in outbox(conn)] == [
        ("task.failed", 1),
        ("task.completed", 2),
    ]


# -- delivery ---------------------------------------------------------------------------------


def test_delivered_event_is_signed_status_document(
    conn: Conn, receiver: Receiver, sender: Sender
) -> None:
    done, _ = finish(conn, new_task(conn, receiver.url), "completed")
    results = deliver_due(conn, sender, FakeClock())
    assert len(results) == 1 and results[0].delivered and results[0].status_code == 200
    (got,) = receiver.requests
    payload = verified(got)
    assert payload == {
        **TaskStatus.from_row(done).model_dump(mode="json"),
        "event": "task.completed",
    }
    assert got.path == "/hooks/task"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("MovieGen")
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert got.headers["webhook-id"] == outbox(conn)[0]["webhook_id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    assert outbox(conn)[0]["delivered_at"] is not None
    assert deliver_due(conn, sender, FakeClock(time.time() + 10**6)) == []
    assert len(receiver.requests) == 1


def test_receiver_down_then_up_follows_the_schedule(conn: Conn, sender: Sender) -> None:
    receiver = Receiver()  # port reserved, nothing listening
    finish(conn, new_task(conn, receiver.url), "failed")
    clock = FakeClock()
    (first,) = deliver_due(conn, sender, clock)
    assert not first.delivered and first.attempt == 1 and first.status_code is None
    assert first.error and "Connect" in first.error
    assert first.next_attempt_at == pytest.approx(clock.now() + RETRY_SCHEDULE[1])
    assert deliver_due(conn, sender, clock) == []
    for attempt in range(2, 6):
        delay = RETRY_SCHEDULE[attempt - 1]
        clock.advance(delay - 0.5)
        assert deliver_due(conn, sender, clock) == [], f"attempt {attempt} came early"
        clock.advance(0.5)
        (result,) = deliver_due(conn, sender, clock)
        assert (result.attempt, result.delivered) == (attempt, False)
    row = outbox(conn)[0]
    assert row["attempts"] == 5 and row["last_error"] and row["dead_at"] is None
    receiver.start()
    try:
        clock.advance(RETRY_SCHEDULE[5])
        (result,) = deliver_due(conn, sender, clock)
        assert result.delivered and result.attempt == 6
        (got,) = receiver.requests
        assert verified(got)["event"] == "task.failed"
        assert got.headers["webhook-id"] == row["webhook_id"] == result.webhook_id
        clock.advance(10**6)
        assert deliver_due(conn, sender, clock) == []
        assert len(receiver.requests) == 1
    finally:
        receiver.stop()


def test_every_attempt_carries_the_same_id_and_body(
    conn: Conn, receiver: Receiver, sender: Sender
) -> None:
    finish(conn, new_task(conn, receiver.url), "cancelled")
    clock = FakeClock()
    receiver.status = 500
    for attempt in (1, 2):
        (result,) = deliver_due(conn, sender, clock)
        assert (result.attempt, result.delivered, result.status_code) == (attempt, False, 500)
        assert result.error == "HTTP 500"
        clock.advance(RETRY_SCHEDULE[attempt])
    receiver.status = 204
    (result,) = deliver_due(conn, sender, clock)
    assert result.delivered and result.status_code == 204
    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    assert all(verified(r)["event"] == "task.cancelled" for r in receiver.requests)


@pytest.mark.parametrize("status", [500, 503, 404, 400, 302, 301, 307])
def test_only_2xx_counts_and_redirects_are_not_followed(
    conn: Conn, receiver: Receiver, sender: Sender, status: int
) -> None:
    elsewhere = Receiver().start()
    try:
        receiver.status = status
        receiver.location = elsewhere.url if 300 <= status < 400 else ""
        finish(conn, new_task(conn, receiver.url), "completed")
        (result,) = deliver_due(conn, sender, FakeClock())
        assert not result.delivered and result.status_code == status
        if 300 <= status < 400:
            assert result.error and "redirect" in result.error
        assert elsewhere.requests == []
        row = outbox(conn)[0]
        assert row["last_status"] == status and row["delivered_at"] is None
    finally:
        elsewhere.stop()


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_attempt_is_time_boxed(
    conn: Conn, receiver: Receiver, sender: Sender, behaviour: str
) -> None:
    receiver.behaviour = behaviour
    finish(conn, new_task(conn, receiver.url), "completed")
    started = time.monotonic()
    (result,) = deliver_due(conn, sender, FakeClock())
    elapsed = time.monotonic() - started
    assert not result.delivered and result.error == f"timed out after {TIMEOUT:g}s"
    assert elapsed < TIMEOUT + 1.0
    assert len(receiver.requests) == 1  # it was sent; the answer just never came in time
    assert outbox(conn)[0]["next_attempt_at"] is not None


def test_event_dies_after_the_schedule(conn: Conn, receiver: Receiver, sender: Sender) -> None:
    assert sum(RETRY_SCHEDULE) >= 24 * 3600
    assert list(RETRY_SCHEDULE[1:]) == sorted(RETRY_SCHEDULE[1:])
    receiver.status = 500
    finish(conn, new_task(conn, receiver.url), "completed")
    clock = FakeClock()
    results = []
    for _ in range(MAX_ATTEMPTS):
        (result,) = deliver_due(conn, sender, clock)
        results.append(result)
        if result.next_attempt_at is not None:
            clock.t = result.next_attempt_at
    assert [r.attempt for r in results] == list(range(1, MAX_ATTEMPTS + 1))
    assert [r.dead for r in results] == [False] * (MAX_ATTEMPTS - 1) + [True]
    row = outbox(conn)[0]
    assert row["dead_at"] is not None and row["attempts"] == MAX_ATTEMPTS
    assert row["delivered_at"] is None and row["last_status"] == 500
    clock.advance(10**7)
    assert deliver_due(conn, sender, clock) == []
    assert len(receiver.requests) == MAX_ATTEMPTS


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
    ],
)
def test_private_destinations_are_refused_without_sending(
    conn: Conn, sender: Sender, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    def no_client(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request was attempted")

    monkeypatch.setattr(webhooks.httpx, "Client", no_client)
    finish(conn, new_task(conn, url), "completed")
    (result,) = deliver_due(conn, sender, FakeClock())
    assert not result.delivered and result.status_code is None
    assert result.error and result.error.startswith("callback_url: ")
    assert "non-public" in result.error or "only http and https" in result.error
    assert outbox(conn)[0]["last_error"] == result.error
    with pytest.raises(FetchError):
        webhooks.check_callback_url(url, LOCAL)


def test_loopback_needs_the_allowlist(conn: Conn, receiver: Receiver) -> None:
    finish(conn, new_task(conn, receiver.url), "completed")
    (result,) = deliver_due(conn, Sender(SECRET, Allowlist(), timeout=TIMEOUT), FakeClock())
    assert not result.delivered and result.error and "non-public" in result.error
    assert receiver.requests == []
    webhooks.check_callback_url(receiver.url, LOCAL)  # listed: accepted


def test_concurrent_deliverers_send_each_event_once(
    database_url: str, conn: Conn, receiver: Receiver, sender: Sender
) -> None:
    receiver.behaviour, receiver.hang_s = "hang", 0.1  # slow enough for the two to overlap
    for _ in range(8):
        finish(conn, new_task(conn, receiver.url), "completed")
    clock = FakeClock()
    counts: list[int] = []

    def run() -> None:
        with psycopg.connect(database_url) as own:
            counts.append(len(deliver_due(own, sender, clock)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 8 and all(counts), counts
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 8 == len(set(ids))
    assert all(r["delivered_at"] is not None for r in outbox(conn))


def test_a_deliverer_that_dies_mid_attempt_only_delays_the_event(
    conn: Conn, receiver: Receiver, sender: Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    finish(conn, new_task(conn, receiver.url), "completed")
    clock = FakeClock()

    def die(*args: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sender, "send", die)
        with pytest.raises(KeyboardInterrupt):
            deliver_due(conn, sender, clock)
    assert deliver_due(conn, sender, clock) == []  # still leased to the dead deliverer
    clock.advance(TIMEOUT + webhooks.LEASE_MARGIN_S)
    (result,) = deliver_due(conn, sender, clock)
    assert result.delivered and result.attempt == 2
    assert len(receiver.requests) == 1


def test_limit_and_time_budget_bound_one_call(
    conn: Conn, receiver: Receiver, sender: Sender
) -> None:
    for _ in range(4):
        finish(conn, new_task(conn, receiver.url), "completed")
    clock = FakeClock()
    assert len(deliver_due(conn, sender, clock, limit=1)) == 1
    receiver.behaviour, receiver.hang_s = "hang", 0.2
    assert len(deliver_due(conn, sender, clock, max_seconds=0.1)) == 1
    receiver.behaviour = "respond"
    assert len(deliver_due(conn, sender, clock)) == 2
    assert len(receiver.requests) == 4


def test_deliver_due_refuses_an_open_transaction(conn: Conn, sender: Sender) -> None:
    conn.execute("SELECT 1")
    with pytest.raises(ValueError):
        deliver_due(conn, sender, FakeClock())
    conn.rollback()


def test_unique_webhook_ids(conn: Conn) -> None:
    for _ in range(3):
        finish(conn, new_task(conn, "https://example.com/hook"), "completed")
    ids = [r["webhook_id"] for r in outbox(conn)]
    assert len(set(ids)) == 3
    assert all(uuid.UUID(i.removeprefix("msg_")) for i in ids)
