"""API keys: project-scoped or admin, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg


@dataclass(frozen=True)
class Caller:
    """Who is calling: one project's key, or an admin key covering every project."""

    key_id: int
    name: str
    project_id: str | None

    @property
    def is_admin(self) -> bool:
        """Admin keys see every project."""
        return self.project_id is None

    def covers(self, project_id: str) -> bool:
        """Whether this key may act on the given project."""
        return self.project_id is None or self.project_id == project_id


def hash_key(raw: str) -> bytes:
    """Keys are 256-bit random tokens, so a plain SHA-256 is a sufficient one-way hash."""
    return hashlib.sha256(raw.encode()).digest()


def new_key() -> str:
    """A fresh random API key."""
    return "mg_" + secrets.token_urlsafe(32)


def store_key(
    conn: psycopg.Connection[Any],
    raw: str,
    name: str,
    project_id: str | None,
    expires_at: datetime | None = None,
) -> int:
    """Insert (or re-activate) a key; returns its id."""
    row = conn.execute(
        """
        INSERT INTO moviegen.api_keys (key_hash, name, project_id, expires_at)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (key_hash) DO UPDATE
            SET name = EXCLUDED.name, project_id = EXCLUDED.project_id,
                expires_at = EXCLUDED.expires_at, revoked_at = NULL
        RETURNING key_id
        """,
        (hash_key(raw), name, project_id, expires_at),
    ).fetchone()
    assert row is not None
    return int(row["key_id"] if isinstance(row, dict) else row[0])


def revoke_key(conn: psycopg.Connection[Any], key_id: int) -> bool:
    """Revoke a key by id; False if there is no such active key."""
    cur = conn.execute(
        "UPDATE moviegen.api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
        (key_id,),
    )
    return cur.rowcount == 1


def rotate_key(conn: psycopg.Connection[Any], key_id: int, grace: timedelta) -> str:
    """Issue a new key for the same project and name, and let the old one expire after `grace`.

    Both keys work during the grace period, so clients can switch over without downtime. The
    new key keeps the old one's expiry, if it had one (rotation renews the secret, not the
    lifetime), and the old key never gains time. Returns the new raw key; raises LookupError
    when `key_id` is unknown, revoked or already expired. Atomic in the caller's transaction.
    """
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    with conn.transaction():
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        old = cur.execute(
            "SELECT key_id, name, project_id, expires_at FROM moviegen.api_keys "
            "WHERE key_id = %s AND revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE",
            (key_id,),
        ).fetchone()
        if old is None:
            raise LookupError(f"no active API key with id {key_id}")
        raw = new_key()
        store_key(conn, raw, old["name"], old["project_id"], old["expires_at"])
        cur.execute(
            "UPDATE moviegen.api_keys SET expires_at = LEAST(COALESCE(expires_at, 'infinity'), "
            "now() + %s) WHERE key_id = %s",
            (grace, key_id),
        )
    return raw


def list_keys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every key's id, name, project and state (never the key itself)."""
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT key_id, name, project_id, created_at, expires_at, revoked_at "
        "FROM moviegen.api_keys ORDER BY key_id"
    ).fetchall()


def authenticate(conn: psycopg.Connection[Any], raw: str) -> Caller | None:
    """The caller for a presented key, or None when unknown, revoked or expired."""
    digest = hash_key(raw)
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute(
        "SELECT key_id, name, project_id, key_hash FROM moviegen.api_keys "
        "WHERE key_hash = %s AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())",
        (digest,),
    ).fetchone()
    # The index lookup is by hash (no timing signal about the key); compare again in
    # constant time so a future change of lookup cannot introduce one.
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
        return None
    return Caller(key_id=row["key_id"], name=row["name"], project_id=row["project_id"])


def seed_keys(conn: psycopg.Connection[Any], spec: str, admin_key: str | None) -> int:
    """Seed keys from MOVIEGEN_API_KEYS ("key1:project_a,key2:project_b") and the admin key."""
    from moviegen_dagster.ids import ID_PATTERN

    count = 0
    for part in filter(None, (p.strip() for p in spec.split(","))):
        raw, sep, project = part.rpartition(":")
        if not sep or not raw or not ID_PATTERN.fullmatch(project):
            raise ValueError("MOVIEGEN_API_KEYS entries must look like key:project_id")
        count += _seed(conn, raw, f"seed:{project}", project)
    if admin_key:
        count += _seed(conn, admin_key, "seed:admin", None)
    return count


def _seed(conn: psycopg.Connection[Any], raw: str, name: str, project_id: str | None) -> int:
    """Insert a seeded key once; a key revoked since stays revoked across restarts."""
    cur = conn.execute(
        "INSERT INTO moviegen.api_keys (key_hash, name, project_id) VALUES (%s, %s, %s) "
        "ON CONFLICT (key_hash) DO NOTHING",
        (hash_key(raw), name, project_id),
    )
    return cur.rowcount
