"""Task callbacks: a transactional outbox of terminal events, delivered as Standard Webhooks.

A task that becomes terminal gets one row in moviegen.webhook_outbox, written in the same
transaction as its status, so an event exists exactly when the status changed. A sensor calls
`deliver_due`, which claims due rows (FOR UPDATE SKIP LOCKED, so several deliverers never send
one event twice at once), POSTs them signed per https://www.standardwebhooks.com and schedules
failed attempts on RETRY_SCHEDULE; after the last one the event is kept and marked dead.
Destinations follow the URL-input rules of fetch.py, checked again at every attempt.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from standardwebhooks import Webhook

from moviegen_dagster.fetch import Allowlist, FetchError, check_url

log = logging.getLogger(__name__)

EVENT_BY_STATUS = {
    "completed": "task.completed",
    "failed": "task.failed",
    "cancelled": "task.cancelled",
}

# Seconds to wait before attempt n+1, counted from attempt n (index 0: before the first).
# About 35 hours in all, so a receiver that is down over a night or a weekend day catches up.
RETRY_SCHEDULE: tuple[float, ...] = (
    0,
    5,
    30,
    120,
    600,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    12 * 3600,
)
MAX_ATTEMPTS = len(RETRY_SCHEDULE)

# A claimed row is not due again until the attempt's deadline plus this margin, so a deliverer
# that dies mid-attempt delays its events a little instead of losing them.
LEASE_MARGIN_S = 60.0

DEFAULT_USER_AGENT = "MovieGen-Webhooks/1.0"
MAX_ERROR_CHARS = 500

# Version 2 of db.MIGRATIONS; runs inside the migration's transaction, after version 1.
OUTBOX_MIGRATION_SQL = """
CREATE TABLE moviegen.webhook_outbox (
    id               bigserial PRIMARY KEY,
    webhook_id       text NOT NULL UNIQUE,      -- the `webhook-id` of every attempt
    task_id          uuid NOT NULL REFERENCES moviegen.tasks (task_id) ON DELETE CASCADE,
    task_attempt     integer NOT NULL,          -- tasks.attempt when it became terminal
    event            text NOT NULL
        CHECK (event IN ('task.completed', 'task.failed', 'task.cancelled')),
    url              text NOT NULL,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    dead_at          timestamptz,               -- schedule exhausted; kept for inspection
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- One terminal event per task; a manual retry bumps tasks.attempt, and its own terminal
    -- state is a new event the client must hear about.
    UNIQUE (task_id, task_attempt)
);
CREATE INDEX webhook_outbox_due ON moviegen.webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
"""

OUTBOX_COLUMNS = (
    "id, webhook_id, task_id, task_attempt, event, url, payload, attempts, next_attempt_at, "
    "last_attempt_at, delivered_at, dead_at, last_status, last_error, created_at"
)


class Clock(Protocol):
    """Source of the current time (seconds since the epoch) for delivery scheduling."""

    def now(self) -> float:
        """Current time in seconds since the epoch."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        """time.time()."""
        return time.time()


def generate_secret() -> str:
    """A new signing secret in the Standard Webhooks form (`whsec_` + base64 of 32 bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_callback_url(url: str, allowlist: Allowlist) -> None:
    """Refuse a callback URL the sender would refuse (raises fetch.FetchError)."""
    check_url(url, allowlist, "callback_url")


def _json_default(value: Any) -> Any:
    # Rows carry UUIDs and datetimes; callers should pass a JSON-mode document, but a plain
    # row-derived dict must not break the status transaction.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def encode_payload(payload: Mapping[str, Any]) -> str:
    """The exact body that is signed and sent (deterministic, so every attempt is identical)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def enqueue_terminal_event(
    conn: psycopg.Connection[Any],
    row: Mapping[str, Any],
    document: Mapping[str, Any],
    now: float | None = None,
) -> bool:
    """Queue the callback of a task row that just became terminal; True if a row was added.

    Call it in the transaction that changed the status, with the row that change returned.
    Rows that are not terminal (an automatic retry in progress) or have no callback_url, and
    events already queued for this task attempt, add nothing.
    """
    event = EVENT_BY_STATUS.get(str(row.get("status")))
    url = row.get("callback_url")
    if event is None or not url:
        return False
    payload = {**document, "event": event}
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO moviegen.webhook_outbox
                (webhook_id, task_id, task_attempt, event, url, payload, next_attempt_at)
            VALUES (%s, %s, %s, %s, %s, %s, COALESCE(to_timestamp(%s), now()))
            ON CONFLICT (task_id, task_attempt) DO NOTHING
            RETURNING id
            """,
            (
                f"msg_{uuid.uuid4().hex}",
                row["task_id"],
                int(row["attempt"]),
                event,
                url,
                Jsonb(payload, dumps=_dumps),
                now,
            ),
        )
        return cur.fetchone() is not None


@dataclass(frozen=True)
class SendOutcome:
    """What one POST achieved: the HTTP status if one came back, else why not."""

    status_code: int | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Only a 2xx answer counts as delivered."""
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Signs and POSTs one event to a checked, pinned destination; never raises for the network."""

    def __init__(
        self,
        secret: str,
        allowlist: Allowlist,
        timeout: float = 10.0,
        user_agent: str = DEFAULT_USER_AGENT,
        wall_clock: Callable[[], float] = time.time,
        verify: bool = True,
    ) -> None:
        self._webhook = Webhook(secret)  # refuses an empty secret before anything is sent
        self.allowlist = allowlist
        self.timeout = timeout
        self.user_agent = user_agent
        # webhook-timestamp is checked by receivers against their real clock, so it comes from
        # the wall clock even when delivery scheduling runs on an injected one.
        self._wall_clock = wall_clock
        self._verify = verify

    def signed_headers(self, webhook_id: str, body: str) -> dict[str, str]:
        """The Standard Webhooks headers for this body, stamped now."""
        # The header and the signature must use the same whole second.
        stamp = math.floor(self._wall_clock())
        signature = self._webhook.sign(webhook_id, datetime.fromtimestamp(stamp, tz=UTC), body)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature,
        }

    def send(self, url: str, webhook_id: str, payload: Mapping[str, Any]) -> SendOutcome:
        """POST the event once; redirects are not followed and the whole attempt is time-boxed."""
        started = time.monotonic()

        def done(status: int | None, error: str | None) -> SendOutcome:
            return SendOutcome(
                status, error and error[:MAX_ERROR_CHARS], time.monotonic() - started
            )

        try:
            # Checked at every attempt: the name may now resolve elsewhere, or the allowlist
            # may have changed since the task was accepted.
            host, port, addr = check_url(url, self.allowlist, "callback_url")
        except FetchError as exc:
            return done(None, str(exc))
        parts = urlsplit(url)
        netloc = f"[{addr}]" if addr.version == 6 else str(addr)
        pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        body = encode_payload(payload)
        headers = {
            "Host": parts.netloc,
            "content-type": "application/json",
            "user-agent": self.user_agent,
            **self.signed_headers(webhook_id, body),
        }

        # httpx's timeouts are per socket operation, so a receiver trickling bytes could hold
        # an attempt for ever; a watchdog shuts the socket down at the attempt's deadline.
        lock = threading.Lock()
        state: dict[str, Any] = {"sock": None, "expired": False}

        def shut(sock: socket.socket) -> None:
            with contextlib.suppress(OSError):  # already closed: nothing left to stop
                sock.shutdown(socket.SHUT_RDWR)

        def expire() -> None:
            with lock:
                state["expired"] = True
                sock = state["sock"]
            if sock is not None:
                shut(sock)

        def trace(name: str, info: dict[str, Any]) -> None:
            if name == "connection.connect_tcp.complete":
                stream = info.get("return_value")
                sock = stream.get_extra_info("socket") if stream is not None else None
                with lock:
                    state["sock"] = sock
                    late = state["expired"]
                if late and sock is not None:
                    shut(sock)

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            with (
                # trust_env=False: a proxy from the environment would bypass the pinned address.
                httpx.Client(
                    timeout=self.timeout,
                    follow_redirects=False,
                    trust_env=False,
                    verify=self._verify,
                ) as client,
                client.stream(
                    "POST",
                    pinned,
                    content=body.encode(),
                    headers=headers,
                    extensions={"sni_hostname": host, "trace": trace},
                ) as resp,
            ):
                status = resp.status_code  # the body is never read: only the status matters
        except httpx.TimeoutException:
            return done(None, f"timed out after {self.timeout:g}s")
        except (httpx.HTTPError, OSError) as exc:
            if state["expired"]:
                return done(None, f"timed out after {self.timeout:g}s")
            return done(None, f"{type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            watchdog.cancel()
        # A status that arrived in time stands even if the watchdog fired while closing.
        if 300 <= status < 400:
            return done(status, f"HTTP {status}: redirects are not followed")
        if not 200 <= status < 300:
            return done(status, f"HTTP {status}")
        return done(status, None)


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt made by deliver_due and what became of the event."""

    webhook_id: str
    task_id: uuid.UUID
    event: str
    attempt: int
    status_code: int | None
    error: str | None
    delivered: bool
    dead: bool
    next_attempt_at: float | None


def _claim(
    conn: psycopg.Connection[Any], now: float, lease_until: float, seen: list[int]
) -> dict[str, Any] | None:
    """Take the most overdue event nobody else holds, counting the attempt and leasing it."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""
            UPDATE moviegen.webhook_outbox
            SET attempts = attempts + 1,
                last_attempt_at = to_timestamp(%(now)s),
                next_attempt_at = to_timestamp(%(lease_until)s)
            WHERE id = (
                SELECT id FROM moviegen.webhook_outbox
                WHERE delivered_at IS NULL AND dead_at IS NULL
                  AND next_attempt_at <= to_timestamp(%(now)s)
                  AND id <> ALL(%(seen)s)
                ORDER BY next_attempt_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING {OUTBOX_COLUMNS}
            """,
            {"now": now, "lease_until": lease_until, "seen": seen},
        )
        return cur.fetchone()


def _record(
    conn: psycopg.Connection[Any], row: dict[str, Any], outcome: SendOutcome, now: float
) -> DeliveryResult:
    """Store an attempt's outcome and schedule the next one (or mark the event dead)."""
    attempt = int(row["attempts"])
    delivered = outcome.ok
    dead = False
    next_at: float | None = None
    with conn.transaction(), conn.cursor() as cur:
        if delivered:
            cur.execute(
                """
                UPDATE moviegen.webhook_outbox
                SET delivered_at = to_timestamp(%s), last_status = %s, last_error = NULL
                WHERE id = %s AND delivered_at IS NULL
                """,
                (now, outcome.status_code, row["id"]),
            )
        else:
            dead = attempt >= MAX_ATTEMPTS
            next_at = None if dead else now + RETRY_SCHEDULE[attempt]
            # `attempts = %s`: if the lease ran out and another deliverer took the event,
            # its newer attempt owns the schedule.
            cur.execute(
                """
                UPDATE moviegen.webhook_outbox
                SET last_status = %s, last_error = %s,
                    next_attempt_at = COALESCE(to_timestamp(%s), next_attempt_at),
                    dead_at = CASE WHEN %s THEN to_timestamp(%s) END
                WHERE id = %s AND attempts = %s AND delivered_at IS NULL
                """,
                (outcome.status_code, outcome.error, next_at, dead, now, row["id"], attempt),
            )
    return DeliveryResult(
        webhook_id=row["webhook_id"],
        task_id=row["task_id"],
        event=row["event"],
        attempt=attempt,
        status_code=outcome.status_code,
        error=outcome.error,
        delivered=delivered,
        dead=dead,
        next_attempt_at=next_at,
    )


def deliver_due(
    conn: psycopg.Connection[Any],
    sender: Sender,
    clock: Clock | None = None,
    limit: int = 50,
    max_seconds: float | None = None,
) -> list[DeliveryResult]:
    """Attempt up to `limit` due events, one at a time; returns what each attempt did.

    `conn` must not be inside a transaction: each claim and each outcome commits on its own,
    so no row lock or transaction stays open while a receiver is being waited for.
    No attempt starts after `max_seconds` (real time), so a caller with a deadline of its own
    (a sensor tick) can bound the call to about max_seconds + sender.timeout.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("deliver_due needs a connection outside any transaction")
    clock = clock or SystemClock()
    results: list[DeliveryResult] = []
    seen: list[int] = []
    started = time.monotonic()
    while len(results) < limit:
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            break
        now = clock.now()
        row = _claim(conn, now, now + sender.timeout + LEASE_MARGIN_S, seen)
        if row is None:
            break
        seen.append(int(row["id"]))
        try:
            outcome = sender.send(row["url"], row["webhook_id"], row["payload"])
        except Exception as exc:  # a bug must not stop the other events; it is retried later
            log.exception("webhook %s: unexpected error while sending", row["webhook_id"])
            outcome = SendOutcome(None, f"internal error: {type(exc).__name__}", 0.0)
        result = _record(conn, row, outcome, now)
        if result.dead:
            log.warning(
                "webhook %s for task %s is dead after %d attempts: %s",
                result.webhook_id,
                result.task_id,
                result.attempt,
                result.error,
            )
        results.append(result)
    return results
