"""Idempotent submission: one task per (project, Idempotency-Key) while the key is kept.

A key's row is written in the same transaction as its task, so a client that retries after
any failure (the API killed mid-request included) finds either both or neither. Keys are
scoped per project; a row counts until `expires_at`, after which the key may be used afresh
and the `prune_retention` sensor deletes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Printable ASCII keeps keys loggable and comparable byte for byte. Inner spaces are fine;
# leading or trailing ones are refused, since HTTP intermediaries may strip them.
_KEY_RE = re.compile(rf"[\x21-\x7e](?:[\x20-\x7e]{{0,{MAX_KEY_LENGTH - 2}}}[\x21-\x7e])?")

# Version 3 of db.MIGRATIONS (with limits.MIGRATION_SQL).
MIGRATION_SQL = """
CREATE TABLE moviegen.idempotency_keys (
    project_id      text NOT NULL,
    idem_key        text NOT NULL,
    request_hash    bytea NOT NULL,
    task_id         uuid NOT NULL REFERENCES moviegen.tasks (task_id) ON DELETE CASCADE,
    queue_position  integer,               -- as first answered, so a replay answers the same
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (project_id, idem_key)
);
CREATE INDEX idempotency_keys_expires ON moviegen.idempotency_keys (expires_at);
CREATE INDEX idempotency_keys_task ON moviegen.idempotency_keys (task_id);
"""


class IdempotencyConflict(Exception):
    """The key was already used in this project for a different submission (HTTP 409)."""


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key presented with a submission, and the hash of that submission."""

    key: str
    request_hash: bytes
    ttl: timedelta


@dataclass(frozen=True)
class Remembered:
    """A stored key: which task it made and how the first answer ranked it."""

    task_id: uuid.UUID
    request_hash: bytes
    queue_position: int | None


def valid_key(value: str) -> bool:
    """Whether a header value is an acceptable key: 1-255 printable ASCII characters."""
    return _KEY_RE.fullmatch(value) is not None


def request_hash(submission: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of a validated submission (key order and spacing fixed)."""
    canonical = json.dumps(
        submission, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).digest()


def lookup(
    conn: psycopg.Connection[Any], project_id: str, key: str, now: datetime
) -> Remembered | None:
    """The unexpired record of a key in a project, or None."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "SELECT task_id, request_hash, queue_position FROM moviegen.idempotency_keys "
        "WHERE project_id = %s AND idem_key = %s AND expires_at > %s",
        (project_id, key, now),
    ).fetchone()
    if row is None:
        return None
    return Remembered(
        task_id=row["task_id"],
        request_hash=bytes(row["request_hash"]),
        queue_position=row["queue_position"],
    )


def remember(
    conn: psycopg.Connection[Any],
    project_id: str,
    claim: Claim,
    task_id: uuid.UUID,
    queue_position: int | None,
    now: datetime,
) -> None:
    """Record the key for its new task (replacing an expired record of the same key)."""
    conn.execute(
        """
        INSERT INTO moviegen.idempotency_keys
            (project_id, idem_key, request_hash, task_id, queue_position, created_at, expires_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (project_id, idem_key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, task_id = EXCLUDED.task_id,
                queue_position = EXCLUDED.queue_position, created_at = EXCLUDED.created_at,
                expires_at = EXCLUDED.expires_at
        """,
        (project_id, claim.key, claim.request_hash, task_id, queue_position, now, now + claim.ttl),
    )


def prune_expired(conn: psycopg.Connection[Any], now: datetime, batch: int = 10_000) -> int:
    """Delete up to `batch` expired keys; returns how many went."""
    cur = conn.execute(
        """
        DELETE FROM moviegen.idempotency_keys WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM moviegen.idempotency_keys WHERE expires_at <= %s LIMIT %s
        ))
        """,
        (now, batch),
    )
    return cur.rowcount
