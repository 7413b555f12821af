"""The ops' view of a task: its request, and where they report progress and results."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from psycopg.rows import dict_row

from moviegen_dagster import store
from moviegen_dagster.previews import Preview

# One autocommit connection per database per process, reused across runs.
_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


class TaskStateResource(dg.ConfigurableResource):
    """Reads the task a run carries and records its progress in the moviegen schema."""

    database_url: str
    # Progress writes are throttled: a client polls every few seconds, not every step.
    min_interval_seconds: float = 0.2

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """This process's connection, opened once (a worker slot writes many small updates)."""
        conn = _CONNECTIONS.get(self.database_url)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True)
            _CONNECTIONS[self.database_url] = conn
        try:
            yield conn
        except psycopg.OperationalError:
            # A dropped connection is replaced on next use; the caller sees the error once.
            conn.close()
            raise

    def load(self, task_id: str) -> store.Row:
        """The stored task (request, project, parameters)."""
        with self._conn() as conn:
            row = store.get_task(conn, uuid.UUID(task_id), None)
        if row is None:
            raise dg.Failure(f"task {task_id} does not exist", allow_retries=False)
        return row

    def reporter(self, context: dg.OpExecutionContext, task_id: str) -> ProgressReporter:
        """A progress reporter bound to one run."""
        return ProgressReporter(self, context, task_id)

    def save_result(self, task_id: str, result: dict[str, Any]) -> None:
        """Keep the media description on the task."""
        with self._conn() as conn:
            store.store_result(conn, task_id, result)

    def save_error(self, task_id: str, code: str, message: str) -> None:
        """Keep the most specific error the op knows, for the failed status."""
        with self._conn() as conn:
            conn.execute(
                "UPDATE moviegen.tasks SET error = %s WHERE task_id = %s",
                (psycopg.types.json.Jsonb({"code": code, "message": message}), uuid.UUID(task_id)),
            )

    def save_preview(self, task_id: str, preview: Preview) -> bool:
        """Keep the task's latest preview (False once the task is no longer open)."""
        with self._conn() as conn:
            return store.save_preview(conn, task_id, preview)

    def write_progress(self, task_id: str, run_id: str, progress: float, step: str) -> None:
        """One progress write."""
        with self._conn() as conn:
            store.report_progress(conn, task_id, run_id, progress, step)


class ProgressReporter:
    """Reports monotonic progress to the task row and as Dagster log events."""

    def __init__(self, state: TaskStateResource, context: dg.OpExecutionContext, task_id: str):
        self._state = state
        self._context = context
        self._task_id = task_id
        self._last_write = 0.0
        self._last_step = ""
        self.value = 0.0

    def __call__(self, progress: float, step: str, force: bool = False) -> None:
        """Record progress; writes are throttled except on a step change."""
        self.value = max(self.value, progress)
        now = time.monotonic()
        changed = step != self._last_step
        if not (force or changed or now - self._last_write >= self._state.min_interval_seconds):
            return
        self._last_write = now
        self._last_step = step
        self._state.write_progress(self._task_id, self._context.run_id, self.value, step)
        self._context.log.info(f"progress {self.value:.2f} {step}")
