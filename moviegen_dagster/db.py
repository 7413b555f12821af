"""PostgreSQL schema of MovieGen's own state (the `moviegen` schema) and connection helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from moviegen_dagster import idempotency, limits
from moviegen_dagster.metrics import STATS_MIGRATION_SQL
from moviegen_dagster.webhooks import OUTBOX_MIGRATION_SQL

# Ordered migrations; each runs once, recorded in moviegen.schema_migrations.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE moviegen.api_keys (
            key_id       bigserial PRIMARY KEY,
            key_hash     bytea NOT NULL UNIQUE,
            name         text NOT NULL,
            project_id   text,                 -- NULL: admin key, every project
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz,
            revoked_at   timestamptz
        );
        CREATE TABLE moviegen.tasks (
            task_id             uuid PRIMARY KEY,
            project_id          text NOT NULL,
            task_type           text NOT NULL,
            priority            smallint NOT NULL,
            status              text NOT NULL DEFAULT 'queued',
            progress            real NOT NULL DEFAULT 0,
            current_step        text NOT NULL DEFAULT 'waiting_in_queue',
            attempt             integer NOT NULL DEFAULT 1,
            partition_key       text NOT NULL,
            task_data           jsonb NOT NULL,
            metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
            callback_url        text,
            estimated_duration  integer NOT NULL,
            run_id              text,
            result              jsonb,
            error               jsonb,
            parent_task_id      uuid,
            created_at          timestamptz NOT NULL DEFAULT now(),
            started_at          timestamptz,
            completed_at        timestamptz,
            updated_at          timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX tasks_project_created ON moviegen.tasks (project_id, created_at DESC);
        CREATE INDEX tasks_open ON moviegen.tasks (priority, created_at)
            WHERE status IN ('queued', 'processing');
        CREATE INDEX tasks_unlaunched ON moviegen.tasks (created_at)
            WHERE run_id IS NULL;
        CREATE TABLE moviegen.workers (
            worker_id        text PRIMARY KEY,
            worker_type      text NOT NULL,
            hostname         text NOT NULL,
            pid              integer NOT NULL,
            status           text NOT NULL DEFAULT 'idle',
            current_task_id  uuid,
            current_run_id   text,
            tasks_completed  integer NOT NULL DEFAULT 0,
            gpu_utilization  real,
            memory_usage     bigint,
            started_at       timestamptz NOT NULL DEFAULT now(),
            last_heartbeat   timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
]
# The webhook outbox: one row per terminal event, delivered by the deliver_webhooks sensor.
MIGRATIONS.append((2, OUTBOX_MIGRATION_SQL))
# Admission guards: Idempotency-Key records and per-project submit token buckets.
MIGRATIONS.append((3, idempotency.MIGRATION_SQL + limits.MIGRATION_SQL))
# Live task events: every observable change of a task bumps its event_seq (the SSE event id)
# and notifies channel moviegen_task with the task id, so open streams wake without polling.
MIGRATIONS.append(
    (
        5,
        """
        ALTER TABLE moviegen.tasks ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
        CREATE FUNCTION moviegen.task_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Any column but bookkeeping ones: columns added later are covered too.
            IF to_jsonb(NEW) - ARRAY['updated_at', 'run_id', 'event_seq']
               IS DISTINCT FROM to_jsonb(OLD) - ARRAY['updated_at', 'run_id', 'event_seq'] THEN
                NEW.event_seq := OLD.event_seq + 1;
                PERFORM pg_notify('moviegen_task', NEW.task_id::text);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER tasks_event BEFORE UPDATE ON moviegen.tasks
            FOR EACH ROW EXECUTE FUNCTION moviegen.task_event();
        """
        # Prometheus counters kept as tasks end and callbacks are delivered (metrics.py).
        + STATS_MIGRATION_SQL,
    )
)

# Attempt history: one entry per execution of a task's generation step (op retries after
# out-of-memory inside a run, and run retries after a lost worker), shown in the status.
MIGRATIONS.append(
    (6, "ALTER TABLE moviegen.tasks ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]'::jsonb")
)

# Backfills and provenance: per-project backfill requests (their plan and the Dagster
# backfills launched for them), each take's inputs/models for staleness, and which backfill
# created a task.
MIGRATIONS.append(
    (
        4,
        """
        CREATE TABLE moviegen.backfills (
            backfill_id           uuid PRIMARY KEY,
            project_id            text NOT NULL,
            requested_by          text NOT NULL,
            selection             jsonb NOT NULL,
            dry_run               boolean NOT NULL,
            status                text NOT NULL,
            plan                  jsonb NOT NULL,
            dagster_backfill_ids  jsonb NOT NULL DEFAULT '[]'::jsonb,
            error                 text,
            created_at            timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX backfills_project_created ON moviegen.backfills (project_id, created_at DESC);
        ALTER TABLE moviegen.tasks ADD COLUMN provenance jsonb;
        ALTER TABLE moviegen.tasks ADD COLUMN backfill_id uuid;
        CREATE INDEX tasks_backfill ON moviegen.tasks (backfill_id) WHERE backfill_id IS NOT NULL;
        CREATE INDEX tasks_partition ON moviegen.tasks (partition_key, task_type, created_at DESC);
        """,
    )
)


# Previews: the latest small image of a take in progress (previews.py). Writing one bumps
# tasks.preview_seq, so the event trigger numbers it and wakes the task's open streams.
MIGRATIONS.append(
    (
        7,
        """
        CREATE TABLE moviegen.task_previews (
            task_id     uuid PRIMARY KEY REFERENCES moviegen.tasks (task_id) ON DELETE CASCADE,
            kind        text NOT NULL,
            label       text NOT NULL,
            media_type  text NOT NULL,
            width       integer NOT NULL,
            height      integer NOT NULL,
            data        bytea NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE moviegen.tasks ADD COLUMN preview_seq integer NOT NULL DEFAULT 0;
        """,
    )
)


def migrate(database_url: str) -> None:
    """Apply pending migrations (safe to call from several processes at once)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # An advisory lock serialises concurrent starters.
        conn.execute("SELECT pg_advisory_lock(727001)")
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS moviegen")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS moviegen.schema_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM moviegen.schema_migrations")}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO moviegen.schema_migrations (version) VALUES (%s)", (version,)
                    )
        finally:
            conn.execute("SELECT pg_advisory_unlock(727001)")


DictConnection = psycopg.Connection[dict[str, Any]]
DictPool = ConnectionPool[DictConnection]


def make_pool(database_url: str, max_size: int = 10, name: str = "moviegen") -> DictPool:
    """A psycopg pool returning dict rows; connections are checked before use."""
    return ConnectionPool(
        database_url,
        connection_class=DictConnection,
        min_size=1,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": False},
        check=ConnectionPool.check_connection,
        name=name,
        open=True,
        timeout=5.0,
    )


@contextmanager
def connect(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """One short-lived connection (for processes that do not need a pool)."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        yield conn
