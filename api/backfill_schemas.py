"""Request and response models of the per-project backfill routes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic_core import PydanticCustomError

from api.schemas import ID_PATTERN, TaskState, TaskType, UtcDateTime
from moviegen_dagster import backfills, store

Reason = Literal["missing", "failed", "stale"]
SubjectId = Annotated[str, Field(strict=True, pattern=ID_PATTERN, max_length=64)]
MAX_SUBJECTS = 500


def _all_task_types() -> list[TaskType]:
    return ["generate_video", "generate_image", "process_audio"]


def _default_reasons() -> list[Reason]:
    return ["missing", "failed"]


_EXAMPLE: dict[str, Any] = {
    "task_types": ["generate_video"],
    "scenes": ["scene_005"],
    "reasons": ["failed", "stale"],
    "dry_run": True,
}


class BackfillRequest(BaseModel):
    """Which partitions of the project to re-materialize; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    task_types: list[TaskType] = Field(
        default_factory=_all_task_types,
        min_length=1,
        max_length=3,
        description="Media to backfill (default: all three task types).",
    )
    scenes: list[SubjectId] | None = Field(
        default=None,
        max_length=MAX_SUBJECTS,
        description="Subject ids (scene_id, character_id, dialogue_id); default: every one.",
    )
    subjects: list[SubjectId] | None = Field(
        default=None, max_length=MAX_SUBJECTS, description="Same as `scenes`."
    )
    reasons: list[Reason] = Field(
        default_factory=_default_reasons,
        min_length=1,
        max_length=3,
        description="missing (never materialized), failed (latest task failed), stale (inputs "
        "or model changed since the latest take).",
    )
    dry_run: StrictBool = Field(default=False, description="Plan only; launch nothing.")

    @model_validator(mode="after")
    def _one_subject_list(self) -> BackfillRequest:
        if self.scenes is not None and self.subjects is not None:
            raise PydanticCustomError(
                "backfill_subjects",
                "subjects: give either scenes or subjects, not both",
                {"field": "subjects"},
            )
        return self

    def to_selection(self) -> backfills.Selection:
        """The planner's view of this request (duplicates dropped, order kept)."""
        subjects = self.scenes if self.scenes is not None else self.subjects
        return backfills.Selection(
            task_types=tuple(dict.fromkeys(self.task_types)),
            subjects=tuple(dict.fromkeys(subjects)) if subjects is not None else None,
            reasons=tuple(dict.fromkeys(self.reasons)),
            dry_run=self.dry_run,
        )


class BackfillItem(BaseModel):
    """A partition of one media asset the backfill re-materializes, and why."""

    task_type: TaskType
    asset: str
    partition_key: str
    subject: str
    reasons: list[Reason]
    details: list[str]
    parent_task_id: uuid.UUID = Field(
        description="The partition's latest task: the new take's parent."
    )


class BackfillTask(BaseModel):
    """A task the backfill created (a new take, child of the partition's latest task)."""

    task_id: uuid.UUID
    task_type: TaskType
    partition_key: str
    status: TaskState
    parent_task_id: uuid.UUID | None


class BackfillProgress(BaseModel):
    """How far the backfill got."""

    state: Literal["dry_run", "nothing_to_do", "launching", "launch_failed", "running", "completed"]
    planned: int = Field(description="Partitions planned.")
    created: int = Field(description="Tasks created so far (one per run Dagster started).")
    queued: int
    processing: int
    completed: int
    failed: int
    cancelled: int


class BackfillSummary(BaseModel):
    """A backfill request in a listing."""

    backfill_id: uuid.UUID
    project_id: str
    requested_by: Literal["api", "schedule"]
    dry_run: bool
    selection: dict[str, Any]
    progress: BackfillProgress
    dagster_backfill_ids: list[str] = Field(
        description="Dagster backfills launched (see the UI's Backfills page)."
    )
    error: str | None
    created_at: UtcDateTime

    @classmethod
    def fields_from_row(cls, row: store.Row, progress: dict[str, Any]) -> dict[str, Any]:
        """The summary fields of a stored backfill."""
        return {
            "backfill_id": row["backfill_id"],
            "project_id": row["project_id"],
            "requested_by": row["requested_by"],
            "dry_run": row["dry_run"],
            "selection": row["selection"],
            "progress": progress,
            "dagster_backfill_ids": row["dagster_backfill_ids"],
            "error": row["error"],
            "created_at": row["created_at"],
        }


class BackfillDetail(BackfillSummary):
    """A backfill with its plan and the tasks created for it."""

    items: list[BackfillItem]
    tasks: list[BackfillTask]


class BackfillPage(BaseModel):
    """One page of a project's backfills, newest first."""

    project_id: str
    backfills: list[BackfillSummary]
    page: int
    limit: int
    total: int
    pages: int
