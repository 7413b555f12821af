"""prune_retention: expired idempotency keys and long-finished webhook events go, the rest stay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from moviegen_dagster import idempotency, store
from moviegen_dagster.previews import Preview
from moviegen_dagster.settings import get_settings
from sensors.retention import prune, prune_retention
from tests.pg_support import throwaway_database

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A throwaway migrated database, dropped afterwards."""
    with throwaway_database("mg_test_retention") as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """A connection like the sensor's (dict rows, not autocommit), on emptied tables."""
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        c.execute(
            "TRUNCATE moviegen.idempotency_keys, moviegen.webhook_outbox, moviegen.task_previews, "
            "moviegen.tasks"
        )
        c.commit()
        yield c


def _task(conn: Conn) -> uuid.UUID:
    new = store.NewTask(
        project_id="proj_retention",
        task_type="generate_image",
        priority=5,
        task_data={"character_description": "a detective"},
        metadata={},
        callback_url="https://example.com/hook",
        partition_key="proj_retention/unassigned",
    )
    task_id: uuid.UUID = store.insert_task(conn, new, 60)["task_id"]
    return task_id


def _key(conn: Conn, name: str, created: datetime, ttl: timedelta) -> None:
    claim = idempotency.Claim(name, idempotency.request_hash({"k": name}), ttl)
    idempotency.remember(conn, "proj_retention", claim, _task(conn), 1, created)


def _event(conn: Conn, delivered: datetime | None = None, dead: datetime | None = None) -> None:
    conn.execute(
        "INSERT INTO moviegen.webhook_outbox (webhook_id, task_id, task_attempt, event, url, "
        "payload, delivered_at, dead_at) VALUES (%s, %s, 1, 'task.completed', %s, %s, %s, %s)",
        (
            f"msg_{uuid.uuid4().hex}",
            _task(conn),
            "https://example.com/hook",
            Jsonb({}),
            delivered,
            dead,
        ),
    )


def _names(conn: Conn) -> list[str]:
    rows = conn.execute("SELECT idem_key FROM moviegen.idempotency_keys ORDER BY idem_key")
    return [r["idem_key"] for r in rows.fetchall()]


def _events(conn: Conn) -> list[tuple[datetime | None, datetime | None]]:
    rows = conn.execute("SELECT delivered_at, dead_at FROM moviegen.webhook_outbox ORDER BY id")
    return [(r["delivered_at"], r["dead_at"]) for r in rows.fetchall()]


def test_expired_keys_go_and_live_ones_stay(conn: Conn) -> None:
    day = timedelta(hours=24)
    _key(conn, "a-expired", T0 - timedelta(hours=25), day)
    _key(conn, "b-expires-now", T0 - day, day)
    _key(conn, "c-live", T0 - timedelta(hours=23), day)
    counts = prune(conn, T0, timedelta(days=7))
    assert counts["idempotency_keys"] == 2
    assert _names(conn) == ["c-live"]
    # Lookups agree with pruning: an expired key is not found even before it is pruned.
    assert idempotency.lookup(conn, "proj_retention", "c-live", T0) is not None
    assert idempotency.lookup(conn, "proj_retention", "c-live", T0 + timedelta(hours=1)) is None


def test_finished_events_go_after_the_retention(conn: Conn) -> None:
    old, recent = T0 - timedelta(days=7, seconds=1), T0 - timedelta(days=6)
    _event(conn, delivered=old)
    _event(conn, dead=old)
    _event(conn, delivered=recent)
    _event(conn, dead=recent)
    _event(conn)  # still being delivered, however old: never pruned
    counts = prune(conn, T0, timedelta(days=7))
    assert counts["webhook_events"] == 2
    assert _events(conn) == [(recent, None), (None, recent), (None, None)]


def test_previews_of_long_finished_tasks_go(conn: Conn) -> None:
    old, recent = T0 - timedelta(days=30, seconds=1), T0 - timedelta(days=29)
    kept_open, kept_recent, gone = _task(conn), _task(conn), _task(conn)
    for task_id in (kept_open, kept_recent, gone):
        still = Preview("image", "image", "image/jpeg", b"\xff\xd8jpeg", 8, 8)
        assert store.save_preview(conn, str(task_id), still)
    # Ended long ago, ended recently; an open task's preview stays however old it is.
    conn.execute(
        "UPDATE moviegen.tasks SET status = 'completed', updated_at = %s WHERE task_id = %s",
        (old, gone),
    )
    conn.execute(
        "UPDATE moviegen.tasks SET status = 'failed', updated_at = %s WHERE task_id = %s",
        (recent, kept_recent),
    )
    conn.execute("UPDATE moviegen.tasks SET updated_at = %s WHERE task_id = %s", (old, kept_open))
    counts = prune(conn, T0, timedelta(days=7), preview_retention=timedelta(days=30))
    assert counts["previews"] == 1
    assert store.get_preview(conn, gone) is None
    assert store.get_preview(conn, kept_recent) is not None
    assert store.get_preview(conn, kept_open) is not None
    # Without a preview retention nothing is pruned.
    assert prune(conn, T0 + timedelta(days=365), timedelta(days=7))["previews"] == 0


def test_pruning_goes_in_batches(conn: Conn) -> None:
    for i in range(5):
        _key(conn, f"k{i}", T0 - timedelta(days=2), timedelta(hours=1))
    assert prune(conn, T0, timedelta(days=7), batch=3)["idempotency_keys"] == 3
    assert prune(conn, T0, timedelta(days=7), batch=3)["idempotency_keys"] == 2
    assert _names(conn) == []


def test_the_sensor_prunes_with_the_settings(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    _key(conn, "expired", now - timedelta(hours=2), timedelta(hours=1))
    _key(conn, "live", now, timedelta(hours=1))
    _event(conn, delivered=now - timedelta(days=3))
    _event(conn, delivered=now - timedelta(hours=1))
    conn.commit()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MOVIEGEN_OUTBOX_RETENTION_DAYS", "2")
    get_settings.cache_clear()
    try:
        result = prune_retention(dg.build_sensor_context())
    finally:
        get_settings.cache_clear()
    assert isinstance(result, dg.SkipReason)
    assert "1 idempotency key(s), 1 webhook event(s), 0 preview(s)" in str(result.skip_message)
    conn.rollback()
    assert _names(conn) == ["live"]
    assert len(_events(conn)) == 1
