"""Retention: expired Idempotency-Key records, long-finished webhook events and the previews
of long-finished tasks are deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg

from moviegen_dagster import idempotency
from moviegen_dagster.db import connect
from moviegen_dagster.settings import get_settings

# Rows per table per evaluation: keeps each transaction short; a backlog drains over ticks.
BATCH = 10_000


def prune_outbox(conn: psycopg.Connection[Any], before: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` webhook events delivered or dead before `before`."""
    cur = conn.execute(
        """
        DELETE FROM moviegen.webhook_outbox WHERE id = ANY(ARRAY(
            SELECT id FROM moviegen.webhook_outbox
            WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL)
              AND COALESCE(delivered_at, dead_at) < %s
            LIMIT %s
        ))
        """,
        (before, batch),
    )
    return cur.rowcount


def prune_previews(conn: psycopg.Connection[Any], before: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` previews of tasks that ended before `before`."""
    cur = conn.execute(
        """
        DELETE FROM moviegen.task_previews WHERE task_id = ANY(ARRAY(
            SELECT p.task_id FROM moviegen.task_previews p
            JOIN moviegen.tasks t USING (task_id)
            WHERE t.status IN ('completed', 'failed', 'cancelled') AND t.updated_at < %s
            LIMIT %s
        ))
        """,
        (before, batch),
    )
    return cur.rowcount


def prune(
    conn: psycopg.Connection[Any],
    now: datetime,
    outbox_retention: timedelta,
    batch: int = BATCH,
    preview_retention: timedelta | None = None,
) -> dict[str, int]:
    """Delete expired idempotency keys, events finished over `outbox_retention` ago and the
    previews of tasks that ended over `preview_retention` ago."""
    return {
        "idempotency_keys": idempotency.prune_expired(conn, now, batch),
        "webhook_events": prune_outbox(conn, now - outbox_retention, batch),
        "previews": (
            prune_previews(conn, now - preview_retention, batch)
            if preview_retention is not None
            else 0
        ),
    }


@dg.sensor(minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def prune_retention(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Delete expired Idempotency-Key records, webhook events delivered or dead long ago and
    the previews of tasks that ended long ago."""
    settings = get_settings()
    with connect(settings.require_database_url()) as conn:
        counts = prune(
            conn,
            datetime.now(UTC),
            timedelta(days=settings.outbox_retention_days),
            preview_retention=timedelta(days=settings.preview_retention_days),
        )
        conn.commit()
    return dg.SkipReason(
        f"pruned {counts['idempotency_keys']} idempotency key(s), "
        f"{counts['webhook_events']} webhook event(s), {counts['previews']} preview(s)"
    )
