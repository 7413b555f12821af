"""Data access for tasks: every query is scoped by the caller's projects."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from moviegen_dagster.previews import Preview

TERMINAL = ("completed", "failed", "cancelled")
OPEN = ("queued", "processing")

# Seconds per task type when nothing has been measured yet; replaced by the median of the
# last completed tasks of that type as soon as there are some.
BASELINE_SECONDS = {"generate_video": 300.0, "generate_image": 60.0, "process_audio": 30.0}

TASK_COLUMNS = (
    "task_id, project_id, task_type, priority, status, progress, current_step, attempt, "
    "partition_key, task_data, metadata, callback_url, estimated_duration, run_id, result, "
    "error, parent_task_id, created_at, started_at, completed_at, updated_at, attempts"
)

Row = dict[str, Any]


@dataclass(frozen=True)
class NewTask:
    """A validated submission, ready to be stored."""

    project_id: str
    task_type: str
    priority: int
    task_data: dict[str, Any]
    metadata: dict[str, Any]
    callback_url: str | None
    partition_key: str
    parent_task_id: uuid.UUID | None = None


def _scope_sql(projects: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    """SQL fragment limiting rows to the caller's projects (None: admin, every project)."""
    if projects is None:
        return "TRUE", ()
    return "project_id = ANY(%s)", (list(projects),)


def work_units(task_type: str, task_data: dict[str, Any]) -> float:
    """Relative size of a task from its parameters (1.0 = the type's default delivery)."""
    if task_type == "generate_video":
        w, h = _resolution(task_data.get("resolution"), (1920, 1080))
        return (float(task_data.get("duration", 7.0)) / 7.0) * (w * h) / (1920 * 1080)
    if task_type == "generate_image":
        w, h = _resolution(task_data.get("resolution"), (1024, 1024))
        return (w * h) / (1024 * 1024)
    return max(len(str(task_data.get("text", ""))), 1) / 40.0


def _resolution(value: Any, default: tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, str) and "x" in value:
        w, _, h = value.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    return default


def estimate_duration(conn: psycopg.Connection[Any], task_type: str, units: float) -> int:
    """Seconds the task is expected to take: measured seconds per unit times its size."""
    row = conn.execute(
        """
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY secs_per_unit) AS median, count(*) AS n
        FROM (
            SELECT EXTRACT(EPOCH FROM completed_at - started_at)
                   / GREATEST((result->'metadata'->>'work_units')::float, 0.01) AS secs_per_unit
            FROM moviegen.tasks
            WHERE task_type = %s AND status = 'completed' AND started_at IS NOT NULL
            ORDER BY completed_at DESC LIMIT 50
        ) recent
        """,
        (task_type,),
    ).fetchone()
    per_unit = BASELINE_SECONDS[task_type]
    if row is not None and row["n"] and row["median"] is not None:
        per_unit = float(row["median"])
    return max(1, round(per_unit * units))


def insert_task(conn: psycopg.Connection[Any], new: NewTask, estimated: int) -> Row:
    """Store an accepted task (status queued, no run yet)."""
    row = conn.execute(
        f"""
        INSERT INTO moviegen.tasks (task_id, project_id, task_type, priority, partition_key,
            task_data, metadata, callback_url, estimated_duration, parent_task_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING {TASK_COLUMNS}
        """,
        (
            uuid.uuid4(),
            new.project_id,
            new.task_type,
            new.priority,
            new.partition_key,
            Jsonb(new.task_data),
            Jsonb(new.metadata),
            new.callback_url,
            estimated,
            new.parent_task_id,
        ),
    ).fetchone()
    assert row is not None
    return row


def get_task(
    conn: psycopg.Connection[Any],
    task_id: str | uuid.UUID,
    projects: Sequence[str] | None,
    for_update: bool = False,
) -> Row | None:
    """A task visible to the caller, or None (unknown and foreign ids look the same)."""
    try:
        tid = uuid.UUID(str(task_id))
    except ValueError:
        return None
    scope, args = _scope_sql(projects)
    lock = " FOR UPDATE" if for_update else ""
    return conn.execute(
        f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE task_id = %s AND {scope}{lock}",
        (tid, *args),
    ).fetchone()


def list_tasks(
    conn: psycopg.Connection[Any],
    project_id: str,
    status: str | None,
    task_type: str | None,
    page: int,
    limit: int,
) -> tuple[list[Row], int]:
    """One page of a project's tasks, newest first, and the total matching."""
    where = ["project_id = %s"]
    args: list[Any] = [project_id]
    if status:
        where.append("status = %s")
        args.append(status)
    if task_type:
        where.append("task_type = %s")
        args.append(task_type)
    cond = " AND ".join(where)
    total_row = conn.execute(f"SELECT count(*) AS n FROM moviegen.tasks WHERE {cond}", args)
    total = int(total_row.fetchone()["n"])  # type: ignore[index]
    rows = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE {cond} "
        "ORDER BY created_at DESC, task_id DESC LIMIT %s OFFSET %s",
        [*args, limit, (page - 1) * limit],
    ).fetchall()
    return rows, total


def queue_position(conn: psycopg.Connection[Any], row: Row) -> int | None:
    """1-based rank among waiting tasks of the same worker type (priority, then age)."""
    if row["status"] != "queued":
        return None
    from moviegen_dagster.settings import WORKER_TYPE_BY_TASK

    wtype = WORKER_TYPE_BY_TASK[row["task_type"]]
    same_type = [t for t, w in WORKER_TYPE_BY_TASK.items() if w == wtype]
    res = conn.execute(
        """
        SELECT count(*) AS n FROM moviegen.tasks
        WHERE status = 'queued' AND task_type = ANY(%s)
          AND (priority < %s OR (priority = %s AND created_at < %s)
               OR (priority = %s AND created_at = %s AND task_id < %s))
        """,
        (
            same_type,
            row["priority"],
            row["priority"],
            row["created_at"],
            row["priority"],
            row["created_at"],
            row["task_id"],
        ),
    ).fetchone()
    assert res is not None
    return int(res["n"]) + 1


def set_run(conn: psycopg.Connection[Any], task_id: uuid.UUID, run_id: str) -> None:
    """Record the Dagster run now carrying the task."""
    conn.execute(
        "UPDATE moviegen.tasks SET run_id = %s, updated_at = now() WHERE task_id = %s",
        (run_id, task_id),
    )


def report_progress(
    conn: psycopg.Connection[Any], task_id: str, run_id: str, progress: float, step: str
) -> None:
    """Move an open task's progress forward (never backwards) and name its current step.

    The run records itself on the task too, so a run launched by the reconciler for a task
    whose launcher died is linked at once.
    """
    conn.execute(
        """
        UPDATE moviegen.tasks
        SET progress = GREATEST(progress, %s), current_step = %s, updated_at = now(),
            status = 'processing', started_at = COALESCE(started_at, now()),
            run_id = COALESCE(run_id, %s)
        WHERE task_id = %s AND status IN ('queued', 'processing')
        """,
        (min(max(progress, 0.0), 1.0), step, run_id, uuid.UUID(task_id)),
    )


def save_preview(conn: psycopg.Connection[Any], task_id: str, preview: Preview) -> bool:
    """Keep an open task's latest preview; False when the task is no longer open.

    One transaction: the change notification (the preview_seq bump) is delivered at commit, so
    a stream it wakes always reads this preview, never the one before it.
    """
    with conn.transaction():
        bumped = conn.execute(
            "UPDATE moviegen.tasks SET preview_seq = preview_seq + 1 "
            "WHERE task_id = %s AND status IN ('queued', 'processing') RETURNING task_id",
            (uuid.UUID(task_id),),
        ).fetchone()
        if bumped is None:
            return False
        conn.execute(
            """
            INSERT INTO moviegen.task_previews
                (task_id, kind, label, media_type, width, height, data)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (task_id) DO UPDATE SET
                kind = EXCLUDED.kind, label = EXCLUDED.label, media_type = EXCLUDED.media_type,
                width = EXCLUDED.width, height = EXCLUDED.height, data = EXCLUDED.data,
                created_at = now()
            """,
            (
                uuid.UUID(task_id),
                preview.kind,
                preview.label,
                preview.media_type,
                preview.width,
                preview.height,
                preview.data,
            ),
        )
    return True


def get_preview(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> Preview | None:
    """The task's latest preview, if it has one."""
    row = conn.execute(
        "SELECT kind, label, media_type, data, width, height "
        "FROM moviegen.task_previews WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    if row is None:
        return None
    return Preview(
        row["kind"],
        row["label"],
        row["media_type"],
        bytes(row["data"]),
        row["width"],
        row["height"],
    )


def store_result(conn: psycopg.Connection[Any], task_id: str, result: dict[str, Any]) -> None:
    """Keep the produced media's description; the run's SUCCESS makes it `completed`."""
    conn.execute(
        "UPDATE moviegen.tasks SET result = %s, updated_at = now() "
        "WHERE task_id = %s AND status IN ('queued', 'processing')",
        (Jsonb(result), uuid.UUID(task_id)),
    )


def run_to_task_status(run_status: str, will_retry: bool) -> str:
    """Map a Dagster run status onto the v1 status words."""
    if run_status in ("QUEUED", "NOT_STARTED", "MANAGED"):
        return "queued"
    if run_status in ("STARTING", "STARTED"):
        return "processing"
    if run_status == "SUCCESS":
        return "completed"
    if run_status in ("CANCELING", "CANCELED"):
        return "cancelled"
    if run_status == "FAILURE":
        return "processing" if will_retry else "failed"
    return "queued"


def apply_run_state(
    conn: psycopg.Connection[Any],
    task_id: uuid.UUID,
    run_id: str,
    status: str,
    attempt: int,
    error: dict[str, Any] | None,
) -> Row | None:
    """Mirror a run's state onto its task; terminal states are final. Returns the new row."""
    step_sql = {
        "completed": "'upload_complete'",
        "failed": "current_step",
        "cancelled": "'cancelled'",
    }.get(status)
    sets = [
        "status = %(status)s",
        "run_id = %(run_id)s",
        "attempt = GREATEST(attempt, %(attempt)s)",
        "updated_at = now()",
    ]
    if status == "processing":
        sets.append("started_at = COALESCE(started_at, now())")
        if attempt > 1:
            sets.append(
                "current_step = CASE WHEN attempt < %(attempt)s "
                "THEN 'retrying' ELSE current_step END"
            )
    if status in TERMINAL:
        sets.append("completed_at = COALESCE(completed_at, now())")
        sets.append(f"current_step = {step_sql}")
    if status == "completed":
        sets.append("progress = 1.0")
        sets.append("error = NULL")  # errors of attempts that were retried in place
    if status == "failed":
        sets.append("error = COALESCE(error, %(error)s)")  # the op's own error is clearer
    return conn.execute(
        f"UPDATE moviegen.tasks SET {', '.join(sets)} "
        f"WHERE task_id = %(task_id)s AND status IN ('queued', 'processing') "
        f"RETURNING {TASK_COLUMNS}",
        {
            "status": status,
            "run_id": run_id,
            "attempt": attempt,
            "error": Jsonb(error) if error is not None else None,
            "task_id": task_id,
        },
    ).fetchone()


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def start_attempt(
    conn: psycopg.Connection[Any],
    task_id: str,
    run_id: str,
    run_attempt: int,
    low_memory: bool,
) -> int:
    """Record that an execution of the task's generation step starts; returns its number.

    Numbers run across op retries (same run) and run retries (a new run), so `attempt` on
    the task always equals the executions so far. An entry left open by a run that died
    is closed here if nothing closed it before.
    """
    with conn.transaction():
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT attempts FROM moviegen.tasks WHERE task_id = %s FOR UPDATE",
                (uuid.UUID(task_id),),
            )
            .fetchone()
        )
        if row is None:
            return max(1, run_attempt)
        entries = list(row["attempts"] or [])
        now = _now_iso()
        for entry in entries:
            if entry.get("ended_at") is None:
                entry["ended_at"] = now
                entry["error"] = entry.get("error") or "interrupted: the run ended mid-attempt"
        number = max(len(entries) + 1, run_attempt, *(int(e["attempt"]) + 1 for e in entries))
        entries.append(
            {
                "attempt": number,
                "run_id": run_id,
                "low_memory": low_memory,
                "started_at": now,
                "ended_at": None,
                "error": None,
            }
        )
        conn.execute(
            "UPDATE moviegen.tasks SET attempts = %s, attempt = GREATEST(attempt, %s), "
            "updated_at = now() WHERE task_id = %s",
            (Jsonb(entries), number, uuid.UUID(task_id)),
        )
    return number


def end_attempt(
    conn: psycopg.Connection[Any], task_id: str, number: int, error: str | None
) -> None:
    """Close one attempt entry with its outcome (error None: the step succeeded)."""
    _close_open_attempts(conn, uuid.UUID(task_id), error, number=number)


def close_run_attempts(
    conn: psycopg.Connection[Any], task_id: uuid.UUID, run_id: str, error: str
) -> None:
    """Close the attempts a failed run left open (its worker died or it was timed out)."""
    _close_open_attempts(conn, task_id, error[:500], run_id=run_id)


def _close_open_attempts(
    conn: psycopg.Connection[Any],
    task_id: uuid.UUID,
    error: str | None,
    number: int | None = None,
    run_id: str | None = None,
) -> None:
    """Close the still open attempt entries with this number and/or of this run."""
    # Correlated with the row being updated, so a concurrent start_attempt is not overwritten.
    closing = (
        "e->>'ended_at' IS NULL"
        " AND (%(n)s::int IS NULL OR (e->>'attempt')::int = %(n)s::int)"
        " AND (%(run_id)s::text IS NULL OR e->>'run_id' = %(run_id)s::text)"
    )
    conn.execute(
        f"""
        UPDATE moviegen.tasks t SET attempts = (
            SELECT jsonb_agg(
                CASE WHEN {closing} THEN e || jsonb_build_object(
                    'ended_at', %(now)s::text, 'error', %(error)s::text)
                ELSE e END ORDER BY i)
            FROM jsonb_array_elements(t.attempts) WITH ORDINALITY AS a(e, i))
        WHERE task_id = %(task_id)s
          AND EXISTS (SELECT 1 FROM jsonb_array_elements(t.attempts) AS x(e) WHERE {closing})
        """,
        {"n": number, "run_id": run_id, "now": _now_iso(), "error": error, "task_id": task_id},
    )


def cancel_unlaunched(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> Row | None:
    """Cancel a queued task that has no run yet."""
    return conn.execute(
        f"""
        UPDATE moviegen.tasks SET status = 'cancelled', current_step = 'cancelled',
            completed_at = now(), updated_at = now()
        WHERE task_id = %s AND status = 'queued' AND run_id IS NULL
        RETURNING {TASK_COLUMNS}
        """,
        (task_id,),
    ).fetchone()


def reopen_for_retry(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> Row | None:
    """Put a failed task back in the queue for a re-execution of its run."""
    return conn.execute(
        f"""
        UPDATE moviegen.tasks SET status = 'queued', current_step = 'waiting_in_queue',
            error = NULL, completed_at = NULL, attempt = attempt + 1, updated_at = now()
        WHERE task_id = %s AND status = 'failed'
        RETURNING {TASK_COLUMNS}
        """,
        (task_id,),
    ).fetchone()


def unlaunched(conn: psycopg.Connection[Any], older_than_s: float, limit: int = 50) -> list[Row]:
    """Open tasks without a run for a while, locked so only one reconciler takes each."""
    return conn.execute(
        f"""
        SELECT {TASK_COLUMNS} FROM moviegen.tasks
        WHERE run_id IS NULL AND status IN ('queued', 'processing')
          AND created_at < now() - make_interval(secs => %s)
        ORDER BY priority, created_at
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (older_than_s, limit),
    ).fetchall()


def open_with_runs(conn: psycopg.Connection[Any], limit: int = 500) -> list[Row]:
    """Open tasks that have a run, for status reconciliation."""
    return conn.execute(
        f"SELECT {TASK_COLUMNS} FROM moviegen.tasks "
        "WHERE status IN ('queued', 'processing') AND run_id IS NOT NULL "
        "ORDER BY updated_at LIMIT %s",
        (limit,),
    ).fetchall()


# -- takes launched outside the API (UI materializations, re-executions, backfills) ------


def latest_task_in_partition(
    conn: psycopg.Connection[Any], partition_key: str, task_type: str
) -> Row | None:
    """The newest task of this type in a partition (the parent of a new take there)."""
    return conn.execute(
        f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE partition_key = %s AND task_type = %s "
        "ORDER BY created_at DESC, task_id DESC LIMIT 1",
        (partition_key, task_type),
    ).fetchone()


def task_for_run(conn: psycopg.Connection[Any], run_id: str) -> Row | None:
    """The task a run already carries, if one was created for it."""
    return conn.execute(
        f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE run_id = %s LIMIT 1", (run_id,)
    ).fetchone()


def insert_child_task(
    conn: psycopg.Connection[Any],
    parent: Row,
    run_id: str,
    priority: int,
    backfill_id: uuid.UUID | None = None,
) -> Row:
    """A new take of the parent's partition: same request, new id, already bound to its run."""
    row = conn.execute(
        f"""
        INSERT INTO moviegen.tasks (task_id, project_id, task_type, priority, partition_key,
            task_data, metadata, callback_url, estimated_duration, parent_task_id, run_id,
            backfill_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING {TASK_COLUMNS}
        """,
        (
            uuid.uuid4(),
            parent["project_id"],
            parent["task_type"],
            priority,
            parent["partition_key"],
            Jsonb(parent["task_data"]),
            Jsonb(parent["metadata"]),
            parent["callback_url"],
            parent["estimated_duration"],
            parent["task_id"],
            run_id,
            backfill_id,
        ),
    ).fetchone()
    assert row is not None
    return row


def reopen_for_rerun(conn: psycopg.Connection[Any], task_id: uuid.UUID, run_id: str) -> Row | None:
    """Reopen a failed task for a re-execution launched outside the API (the Dagster UI).

    SKIP LOCKED: the API's own retry holds the row while it launches the same kind of run,
    and reopens the task itself.
    """
    return conn.execute(
        f"""
        UPDATE moviegen.tasks SET status = 'queued', current_step = 'waiting_in_queue',
            error = NULL, completed_at = NULL, attempt = attempt + 1, run_id = %s,
            updated_at = now()
        WHERE task_id = (SELECT task_id FROM moviegen.tasks WHERE task_id = %s
                         AND status = 'failed' FOR UPDATE SKIP LOCKED)
        RETURNING {TASK_COLUMNS}
        """,
        (run_id, task_id),
    ).fetchone()


def save_provenance(
    conn: psycopg.Connection[Any], task_id: str, provenance: dict[str, Any]
) -> None:
    """Keep what went into a take (input hashes, model and revision) for staleness checks."""
    conn.execute(
        "UPDATE moviegen.tasks SET provenance = %s WHERE task_id = %s",
        (Jsonb(provenance), uuid.UUID(task_id)),
    )


def partition_tasks(
    conn: psycopg.Connection[Any],
    project_id: str,
    task_types: Sequence[str],
    subjects: Sequence[str] | None,
) -> list[Row]:
    """Every task of a project's partitions of these types, newest first per partition."""
    where = ["project_id = %s", "task_type = ANY(%s)"]
    args: list[Any] = [project_id, list(task_types)]
    if subjects is not None:
        where.append("partition_key = ANY(%s)")
        args.append([f"{project_id}/{s}" for s in subjects])
    return conn.execute(
        "SELECT task_id, task_type, partition_key, status, task_data, provenance, result, "
        "priority, created_at FROM moviegen.tasks WHERE "
        + " AND ".join(where)
        + " ORDER BY partition_key, task_type, created_at DESC, task_id DESC",
        args,
    ).fetchall()


BACKFILL_COLUMNS = (
    "backfill_id, project_id, requested_by, selection, dry_run, status, plan, "
    "dagster_backfill_ids, error, created_at"
)


def insert_backfill(
    conn: psycopg.Connection[Any],
    project_id: str,
    requested_by: str,
    selection: dict[str, Any],
    dry_run: bool,
    status: str,
    plan: list[dict[str, Any]],
) -> Row:
    """Record a backfill request and its plan."""
    row = conn.execute(
        f"""
        INSERT INTO moviegen.backfills (backfill_id, project_id, requested_by, selection,
            dry_run, status, plan)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        RETURNING {BACKFILL_COLUMNS}
        """,
        (uuid.uuid4(), project_id, requested_by, Jsonb(selection), dry_run, status, Jsonb(plan)),
    ).fetchone()
    assert row is not None
    return row


def finish_backfill_launch(
    conn: psycopg.Connection[Any],
    backfill_id: uuid.UUID,
    status: str,
    dagster_backfill_ids: list[str],
    error: str | None,
) -> Row | None:
    """Record the outcome of launching a backfill's Dagster backfills."""
    return conn.execute(
        f"UPDATE moviegen.backfills SET status = %s, dagster_backfill_ids = %s, error = %s "
        f"WHERE backfill_id = %s RETURNING {BACKFILL_COLUMNS}",
        (status, Jsonb(dagster_backfill_ids), error, backfill_id),
    ).fetchone()


def get_backfill(
    conn: psycopg.Connection[Any], project_id: str, backfill_id: str | uuid.UUID
) -> Row | None:
    """A backfill of this project, or None (unknown and foreign ids look the same)."""
    try:
        bid = uuid.UUID(str(backfill_id))
    except ValueError:
        return None
    return conn.execute(
        f"SELECT {BACKFILL_COLUMNS} FROM moviegen.backfills "
        "WHERE backfill_id = %s AND project_id = %s",
        (bid, project_id),
    ).fetchone()


def list_backfills(
    conn: psycopg.Connection[Any], project_id: str, page: int, limit: int
) -> tuple[list[Row], int]:
    """One page of a project's backfills, newest first, and their total."""
    total_row = conn.execute(
        "SELECT count(*) AS n FROM moviegen.backfills WHERE project_id = %s", (project_id,)
    ).fetchone()
    total = int(total_row["n"]) if total_row else 0
    rows = conn.execute(
        f"SELECT {BACKFILL_COLUMNS} FROM moviegen.backfills WHERE project_id = %s "
        "ORDER BY created_at DESC, backfill_id DESC LIMIT %s OFFSET %s",
        (project_id, limit, (page - 1) * limit),
    ).fetchall()
    return rows, total


def backfill_task_counts(conn: psycopg.Connection[Any], backfill_id: uuid.UUID) -> dict[str, int]:
    """Tasks a backfill has created so far, by status."""
    rows = conn.execute(
        "SELECT status, count(*) AS n FROM moviegen.tasks WHERE backfill_id = %s GROUP BY status",
        (backfill_id,),
    ).fetchall()
    return {r["status"]: int(r["n"]) for r in rows}


def backfill_tasks(conn: psycopg.Connection[Any], backfill_id: uuid.UUID) -> list[Row]:
    """The tasks a backfill created, oldest first."""
    return conn.execute(
        "SELECT task_id, task_type, partition_key, status, parent_task_id FROM moviegen.tasks "
        "WHERE backfill_id = %s ORDER BY created_at, task_id",
        (backfill_id,),
    ).fetchall()
