"""Data access for tasks: every query is scoped by the caller's projects."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

TERMINAL = ("completed", "failed", "cancelled")
OPEN = ("queued", "processing")

# Seconds per task type when nothing has been measured yet; replaced by the median of the
# last completed tasks of that type as soon as there are some.
BASELINE_SECONDS = {"generate_video": 300.0, "generate_image": 60.0, "process_audio": 30.0}

TASK_COLUMNS = (
    "task_id, project_id, task_type, priority, status, progress, current_step, attempt, "
    "partition_key, task_data, metadata, callback_url, estimated_duration, run_id, result, "
    "error, parent_task_id, created_at, started_at, completed_at, updated_at"
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
