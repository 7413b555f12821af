"""The status document of a task: the API's answer about it, and its callbacks' payload.

It lives here rather than in the API because the service sends it too: the terminal callback
queued by the run-status sync carries exactly what `GET /api/v1/tasks/{id}/status` answers.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from moviegen_dagster import store
from moviegen_dagster.media_urls import with_fresh_url
from moviegen_dagster.settings import get_settings

TaskState = Literal["queued", "processing", "completed", "failed", "cancelled"]


def _utc(value: datetime) -> datetime:
    """Timestamps leave the API in UTC, which pydantic writes with a `Z`."""
    if value.tzinfo is None:
        raise ValueError("timestamp without time zone")
    return value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


def _error_message(error: Any) -> str | None:
    """The stored error (a {code, message} object) as the message clients show."""
    if error is None:
        return None
    if isinstance(error, dict):
        message = error.get("message") or error.get("code")
        return str(message) if message else json.dumps(error)
    return str(error)


class TaskAttempt(BaseModel):
    """One execution of a task's generation step."""

    attempt: int
    run_id: str | None = None
    low_memory: bool = Field(
        default=False, description="Ran with memory savings after an out-of-memory error."
    )
    started_at: UtcDateTime | None = None
    ended_at: UtcDateTime | None = None
    error: str | None = Field(default=None, description="Why it ended; null if it succeeded.")


class TaskStatus(BaseModel):
    """A task's state, progress and, once completed, its result."""

    task_id: uuid.UUID
    project_id: str
    status: TaskState
    progress: float = Field(ge=0.0, le=1.0)
    current_step: str
    result: dict[str, Any] | None
    error: str | None
    started_at: UtcDateTime | None
    completed_at: UtcDateTime | None
    attempt: int = Field(description="1 for the first execution, +1 per retry.")
    parent_task_id: uuid.UUID | None = Field(
        default=None,
        description="The task this one is a new take of (a re-materialization from the Dagster "
        "UI or a backfill); null for tasks submitted through the API.",
    )
    attempts: list[TaskAttempt] = Field(
        default_factory=list,
        description="Every execution so far: retries inside one run (same run_id, e.g. after "
        "out-of-memory) and new runs (e.g. after a lost worker).",
    )

    @classmethod
    def fields_from_row(cls, row: store.Row) -> dict[str, Any]:
        """The status fields of a stored task."""
        return {
            "task_id": row["task_id"],
            "project_id": row["project_id"],
            "status": row["status"],
            # `real` column: round away float32 noise (0.75 stays 0.75, 0.1 is not 0.10000000149).
            "progress": round(float(row["progress"]), 4),
            "current_step": row["current_step"],
            # Ops store the result before the run succeeds; it is only the answer once completed.
            "result": (
                with_fresh_url(get_settings(), row["result"])
                if row["status"] == "completed"
                else None
            ),
            "error": _error_message(row["error"]) if row["status"] == "failed" else None,
            "started_at": row["started_at"],
            "completed_at": row["completed_at"],
            "attempt": row["attempt"],
            "parent_task_id": row.get("parent_task_id"),
            "attempts": row.get("attempts") or [],
        }

    @classmethod
    def from_row(cls, row: store.Row) -> TaskStatus:
        """Build from a stored task."""
        return cls(**cls.fields_from_row(row))
