"""Retention: expired Idempotency-Key records and long-finished webhook events are deleted."""

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


def prune(
    conn: psycopg.Connection[Any],
    now: datetime,
    outbox_retention: timedelta,
    batch: int = BATCH,
) -> dict[str, int]:
    """Delete expired idempotency keys and events finished over `outbox_retention` ago."""
    return {
        "idempotency_keys": idempotency.prune_expired(conn, now, batch),
        "webhook_events": prune_outbox(conn, now - outbox_retention, batch),
    }


@dg.sensor(minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def prune_retention(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Delete expired Idempotency-Key records and webhook events delivered or dead long ago."""
    settings = get_settings()
    with connect(settings.require_database_url()) as conn:
        counts = prune(conn, datetime.now(UTC), timedelta(days=settings.outbox_retention_days))
        conn.commit()
    return dg.SkipReason(
        f"pruned {counts['idempotency_keys']} idempotency key(s), "
        f"{counts['webhook_events']} webhook event(s)"
    )
