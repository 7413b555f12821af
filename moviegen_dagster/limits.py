"""Admission of submissions: idempotent replays, per-project rate limits and queue caps.

Everything is decided in the transaction that inserts the task, under a per-project advisory
lock, so several API processes share one token bucket and one queue count per project, and a
refused submission leaves nothing behind (the rollback returns its token too).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from moviegen_dagster import idempotency, store
from moviegen_dagster.settings import Settings

# Second key of pg_advisory_xact_lock(int, int); the first is a hash of the project id.
PROJECT_LOCK_NAMESPACE = 727003
# Longest wait for another request of the same project before answering 503.
LOCK_TIMEOUT_MS = 5000
# A Retry-After beyond this says little; clients should look again by then.
MAX_RETRY_AFTER_S = 3600

# Version 3 of db.MIGRATIONS, after idempotency.MIGRATION_SQL.
MIGRATION_SQL = """
CREATE TABLE moviegen.rate_buckets (
    project_id  text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX tasks_queued_project ON moviegen.tasks (project_id) WHERE status = 'queued';
-- For the prune_retention sensor: finished webhook events by when they finished.
CREATE INDEX webhook_outbox_finished
    ON moviegen.webhook_outbox ((COALESCE(delivered_at, dead_at)))
    WHERE delivered_at IS NOT NULL OR dead_at IS NOT NULL;
"""


class Refused(Exception):
    """A submission refused for now; `retry_after` is in whole seconds (>= 1)."""

    code = "refused"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, min(MAX_RETRY_AFTER_S, retry_after))


class RateLimited(Refused):
    """The project submitted faster than its rate limit allows (HTTP 429)."""

    code = "rate_limited"

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message, math.ceil(wait_s))
        self.wait_s = wait_s  # until the bucket holds a whole token again (exact)


class EmptyBuckets:
    """One API process's memory of buckets it saw empty, and until when they stay empty.

    A bucket only refills with time (other processes only take from it), so a submission
    arriving before that moment would be refused by the database anyway: it is refused here
    without a query, which keeps a flooding project from costing the database (and the other
    projects) three queries per refused request. Submissions carrying an Idempotency-Key
    still go to the database, whose answer may be the replay of an accepted task.
    """

    def __init__(self, max_projects: int = 10_000) -> None:
        # project -> (empty until, refusal message, the (rate, burst) that computed it)
        self._until: dict[str, tuple[datetime, str, tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self._max_projects = max_projects

    def check(self, project_id: str, admission: Admission) -> None:
        """Raise RateLimited when the project's bucket is known to be empty at `now`."""
        if admission.claim is not None or admission.rate_per_minute <= 0:
            return
        limits = (admission.rate_per_minute, admission.burst)
        with self._lock:
            known = self._until.get(project_id)
            if known is not None and (admission.now >= known[0] or known[2] != limits):
                del self._until[project_id]
                known = None
        if known is not None:
            raise RateLimited(known[1], (known[0] - admission.now).total_seconds())

    def remember(self, project_id: str, admission: Admission, refused: RateLimited) -> None:
        """Note that the project's bucket stays empty for `refused.wait_s` after `now`."""
        with self._lock:
            if len(self._until) >= self._max_projects:
                self._until.clear()  # a bound, not a cache policy: the database decides anyway
            until = admission.now + timedelta(seconds=refused.wait_s)
            limits = (admission.rate_per_minute, admission.burst)
            self._until[project_id] = (until, str(refused), limits)


class QueueFull(Refused):
    """The project already has as many queued tasks as it may (HTTP 429)."""

    code = "queue_full"


@dataclass(frozen=True)
class Admission:
    """What a submission is admitted against: the clock, the limits and an optional key."""

    now: datetime
    rate_per_minute: float = 0.0
    burst: int = 1
    max_queued: int = 0
    claim: idempotency.Claim | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, now: datetime, claim: idempotency.Claim | None = None
    ) -> Admission:
        """The configured limits at time `now`."""
        return cls(
            now=now,
            rate_per_minute=settings.submit_rate_per_minute,
            burst=settings.submit_burst,
            max_queued=settings.max_queued_per_project,
            claim=claim,
        )

    @property
    def guarded(self) -> bool:
        """Whether anything needs the per-project lock."""
        return self.claim is not None or self.rate_per_minute > 0 or self.max_queued > 0


@dataclass(frozen=True)
class Admitted:
    """The stored task, its queue position when accepted, and whether this was a replay."""

    row: store.Row
    queue_position: int | None
    replayed: bool = False


def claim_for(key: str, submission: dict[str, Any], ttl_hours: float) -> idempotency.Claim:
    """The Claim of a key presented with a validated submission (its JSON form)."""
    return idempotency.Claim(
        key=key, request_hash=idempotency.request_hash(submission), ttl=timedelta(hours=ttl_hours)
    )


def admit_and_insert(
    conn: psycopg.Connection[Any], new: store.NewTask, estimated: int, admission: Admission | None
) -> Admitted:
    """Replay, refuse or insert a submission in the caller's transaction (not committed here).

    Raises IdempotencyConflict, RateLimited or QueueFull; the caller's rollback then undoes
    everything this did.
    """
    if admission is None or not admission.guarded:
        row = store.insert_task(conn, new, estimated)
        return Admitted(row, store.queue_position(conn, row))
    # Serialises this project's submissions across API processes until commit: the key
    # lookup, the token and the queue count all hold at the moment the task is inserted.
    # A stuck holder turns into LockNotAvailable (an OperationalError: 503), not a hang.
    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
        (PROJECT_LOCK_NAMESPACE, new.project_id),
    )
    claim = admission.claim
    if claim is not None:
        seen = idempotency.lookup(conn, new.project_id, claim.key, admission.now)
        if seen is not None:
            if seen.request_hash != claim.request_hash:
                raise idempotency.IdempotencyConflict(
                    f"{idempotency.HEADER} was already used in project {new.project_id!r} "
                    "for a different submission"
                )
            original = store.get_task(conn, seen.task_id, None)
            if original is not None:
                # The first answer: the task as accepted (queued), ranked as it was then.
                return Admitted({**original, "status": "queued"}, seen.queue_position, True)
    take_token(conn, new.project_id, admission.now, admission.rate_per_minute, admission.burst)
    check_queue(conn, new.project_id, admission.now, admission.max_queued)
    row = store.insert_task(conn, new, estimated)
    position = store.queue_position(conn, row)
    if claim is not None:
        idempotency.remember(conn, new.project_id, claim, row["task_id"], position, admission.now)
    return Admitted(row, position)


def take_token(
    conn: psycopg.Connection[Any],
    project_id: str,
    now: datetime,
    rate_per_minute: float,
    burst: int,
) -> None:
    """Take one token from the project's bucket or raise RateLimited (0 rate: no limit)."""
    if rate_per_minute <= 0:
        return
    per_second = rate_per_minute / 60.0
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        "INSERT INTO moviegen.rate_buckets (project_id, tokens, updated_at) VALUES (%s, %s, %s) "
        "ON CONFLICT (project_id) DO NOTHING",
        (project_id, float(burst), now),
    )
    bucket = cur.execute(
        "SELECT tokens, updated_at FROM moviegen.rate_buckets WHERE project_id = %s FOR UPDATE",
        (project_id,),
    ).fetchone()
    assert bucket is not None
    # A clock behind the stored one (another process, or a test's) refills nothing.
    elapsed = max(0.0, (now - bucket["updated_at"]).total_seconds())
    tokens = min(float(burst), float(bucket["tokens"]) + elapsed * per_second)
    if tokens < 1.0:
        raise RateLimited(
            f"project {project_id!r} is over its submit rate limit "
            f"({rate_per_minute:g}/minute, burst {burst})",
            (1.0 - tokens) / per_second,
        )
    cur.execute(
        "UPDATE moviegen.rate_buckets SET tokens = %s, updated_at = GREATEST(updated_at, %s) "
        "WHERE project_id = %s",
        (tokens - 1.0, now, project_id),
    )


def check_queue(
    conn: psycopg.Connection[Any], project_id: str, now: datetime, max_queued: int
) -> None:
    """Raise QueueFull when the project already has `max_queued` queued tasks (0: no cap)."""
    if max_queued <= 0:
        return
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM moviegen.tasks "
        "WHERE project_id = %s AND status = 'queued' LIMIT %s) q",
        (project_id, max_queued),
    ).fetchone()
    assert row is not None
    if int(row["n"]) < max_queued:
        return
    raise QueueFull(
        f"project {project_id!r} already has {max_queued} queued tasks",
        _queue_wait(conn, project_id, now),
    )


def _queue_wait(conn: psycopg.Connection[Any], project_id: str, now: datetime) -> int:
    """Seconds until a queued slot is likely to free: the project's soonest expected finish
    among its running tasks, else the shortest estimate among its queued ones."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        """
        SELECT
          (SELECT min(EXTRACT(EPOCH FROM started_at
                              + make_interval(secs => estimated_duration) - %(now)s))
             FROM moviegen.tasks
            WHERE project_id = %(p)s AND status = 'processing' AND started_at IS NOT NULL
          ) AS running_left,
          (SELECT min(estimated_duration) FROM moviegen.tasks
            WHERE project_id = %(p)s AND status = 'queued') AS queued_min
        """,
        {"p": project_id, "now": now},
    ).fetchone()
    assert row is not None
    if row["running_left"] is not None and float(row["running_left"]) >= 1:
        return math.ceil(float(row["running_left"]))
    if row["queued_min"] is not None:
        return int(row["queued_min"])
    return 1
