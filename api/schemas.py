"""Request and response models of the v1 HTTP contract (one per direction; never storage rows)."""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import HttpUrl as _HttpUrl
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from api.task_data import validate_task_data
from moviegen_dagster import store
from moviegen_dagster.ids import ID_PATTERN as ID_PATTERN_RE
from moviegen_dagster.ids import ID_REGEX
from moviegen_dagster.status import TaskAttempt as TaskAttempt
from moviegen_dagster.status import TaskState as TaskState
from moviegen_dagster.status import TaskStatus as TaskStatus
from moviegen_dagster.status import UtcDateTime as UtcDateTime

# Project and subject ids: also the media-key and partition-key segments, so no "/" or "..".
ID_PATTERN = ID_REGEX
_ID_RE = ID_PATTERN_RE

TaskType = Literal["generate_video", "generate_image", "process_audio"]
HealthState = Literal["healthy", "degraded", "unhealthy"]

# Bounds on free-form JSON the API stores (task_data now; per-type validation comes later).
TASK_DATA_MAX_BYTES = 64 * 1024
JSON_MAX_DEPTH = 8
JSON_MAX_STRING = 4_000
JSON_MAX_ITEMS = 64
CALLBACK_URL_MAX = 2_048

# metadata keys that name things: they must be ids (one of them becomes the partition subject).
METADATA_ID_KEYS = ("scene_id", "character_id", "dialogue_id", "user_id", "agent_id")

# Which metadata id names the Dagster partition subject of each task type (DESIGN.md §1).
SUBJECT_KEY_BY_TASK: dict[str, str] = {
    "generate_video": "scene_id",
    "generate_image": "character_id",
    "process_audio": "dialogue_id",
}
UNASSIGNED_SUBJECT = "unassigned"


def partition_key(project_id: str, task_type: str, metadata: dict[str, Any]) -> str:
    """`{project_id}/{subject}`: the task type's subject id from metadata, else "unassigned"."""
    # One partition per task would grow Dagster's partition list without bound, so tasks
    # without a subject share the project's "unassigned" partition.
    subject = metadata.get(SUBJECT_KEY_BY_TASK[task_type])
    if not isinstance(subject, str) or not _ID_RE.fullmatch(subject):
        subject = UNASSIGNED_SUBJECT
    return f"{project_id}/{subject}"


def _json_path(base: str, part: str | int) -> str:
    """Extend a field path: `a.b`, `a[0]`, or `a["odd key"]` for keys that are not plain names."""
    if isinstance(part, int):
        return f"{base}[{part}]"
    if re.fullmatch(r"[A-Za-z0-9_-]+", part):
        return f"{base}.{part}" if base else part
    return f"{base}[{json.dumps(part)}]"


def _bound_error(path: str, message: str) -> PydanticCustomError:
    # The handler in api/errors.py takes `field` from the context: the pydantic location
    # stops at the model field, but clients need the offending element.
    return PydanticCustomError("json_bounds", message, {"field": path})


def _check_string(value: str, path: str, what: str = "string") -> None:
    if len(value) > JSON_MAX_STRING:
        raise _bound_error(path, f"{what} longer than {JSON_MAX_STRING} characters")
    # PostgreSQL jsonb refuses NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in value:
        raise _bound_error(path, f"NUL characters are not allowed in a {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bound_error(path, f"invalid Unicode (lone surrogate) in a {what}") from None


def check_json_bounds(value: Any, path: str, depth: int = 1) -> None:
    """Refuse JSON deeper than 8 levels, strings over 4,000 chars, lists over 64 items."""
    if isinstance(value, dict):
        if depth > JSON_MAX_DEPTH:
            raise _bound_error(path, f"nested deeper than {JSON_MAX_DEPTH} levels")
        for key, item in value.items():
            # A bad key is reported on its object: echoing a 4,000-character key helps nobody.
            _check_string(str(key), path, "key")
            check_json_bounds(item, _json_path(path, str(key)), depth + 1)
    elif isinstance(value, list):
        if depth > JSON_MAX_DEPTH:
            raise _bound_error(path, f"nested deeper than {JSON_MAX_DEPTH} levels")
        if len(value) > JSON_MAX_ITEMS:
            raise _bound_error(path, f"list longer than {JSON_MAX_ITEMS} items")
        for index, item in enumerate(value):
            check_json_bounds(item, _json_path(path, index), depth + 1)
    elif isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, float):
        # Python's json accepts NaN/Infinity; jsonb does not.
        if not math.isfinite(value):
            raise _bound_error(path, "must be a finite number")
    elif value is not None and not isinstance(value, bool | int):
        raise _bound_error(path, "must be a JSON value")


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON serialisation (what the size bounds count)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


_HTTP_URL: TypeAdapter[_HttpUrl] = TypeAdapter(_HttpUrl)


_EXAMPLE_SUBMIT: JsonDict = {
    "project_id": "detective_series_001",
    "task_type": "generate_video",
    "task_data": {
        "storyboard_images": ["https://example.com/frame1.jpg", "https://example.com/frame2.jpg"],
        "scene_description": "Detective enters the dark alley",
        "camera_angle": "wide_shot",
        "lighting": "noir_dramatic",
        "character_positions": ["detective_center"],
        "audio_cues": ["footsteps", "rain_ambience"],
    },
    "priority": 1,
    "callback_url": "https://main-app.com/api/webhooks/task-complete",
    "metadata": {
        "user_id": "user123",
        "agent_id": "video_generation_agent",
        "scene_id": "scene_005",
    },
}


class TaskSubmit(BaseModel):
    """A task submission; unknown fields are refused so typos and `status`/`task_id` fail loudly."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_SUBMIT]})

    project_id: Annotated[str, Field(strict=True, pattern=ID_PATTERN, max_length=64)]
    task_type: TaskType
    task_data: Annotated[
        dict[str, Any],
        Field(
            description=(
                f"Task parameters: at most {TASK_DATA_MAX_BYTES} bytes as JSON, {JSON_MAX_DEPTH} "
                f"levels deep, strings up to {JSON_MAX_STRING} characters, lists up to "
                f"{JSON_MAX_ITEMS} items."
            )
        ),
    ]
    priority: Annotated[
        int, Field(strict=True, ge=1, le=10, description="1 is the most urgent, 10 the least.")
    ] = 5
    callback_url: Annotated[
        str | None, Field(strict=True, max_length=CALLBACK_URL_MAX, description="http(s) URL.")
    ] = None
    metadata: Annotated[
        dict[str, Any],
        Field(
            description=(
                "Free-form; scene_id, character_id, dialogue_id, user_id and agent_id must be ids."
            )
        ),
    ] = Field(default_factory=dict)

    @field_validator("task_data")
    @classmethod
    def _bound_task_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_bounds(value, "task_data")
        if json_size(value) > TASK_DATA_MAX_BYTES:
            raise _bound_error("task_data", f"larger than {TASK_DATA_MAX_BYTES} bytes as JSON")
        return value

    @field_validator("callback_url")
    @classmethod
    def _check_callback_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = _HTTP_URL.validate_python(value)
        except ValidationError:
            raise ValueError("must be an absolute http(s) URL") from None
        # HttpUrl tolerates surrounding whitespace; a stored callback URL must be exact.
        if value != value.strip() or url.scheme not in ("http", "https"):
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_bounds(value, "metadata")
        for key in METADATA_ID_KEYS:
            if key in value:
                item = value[key]
                if not isinstance(item, str) or not _ID_RE.fullmatch(item):
                    raise _bound_error(f"metadata.{key}", f"must be a string matching {ID_PATTERN}")
        # The byte limit is a setting; the route checks it (validators cannot see settings).
        return value

    @model_validator(mode="after")
    def _check_task_data_for_type(self) -> TaskSubmit:
        self.task_data = validate_task_data(self.task_type, self.task_data)
        return self

    def to_new_task(self) -> store.NewTask:
        """The store's view of this submission, with its partition key."""
        return store.NewTask(
            project_id=self.project_id,
            task_type=self.task_type,
            priority=self.priority,
            task_data=self.task_data,
            metadata=self.metadata,
            callback_url=self.callback_url,
            partition_key=partition_key(self.project_id, self.task_type, self.metadata),
        )


class TaskAccepted(BaseModel):
    """Answer to a submission: the task is stored and queued."""

    task_id: uuid.UUID
    status: TaskState
    project_id: str
    estimated_duration: int = Field(description="Expected run time in seconds.")
    queue_position: int | None = Field(
        description="1-based rank among waiting tasks of the same worker type; null once started."
    )
    created_at: UtcDateTime

    @classmethod
    def from_row(cls, row: store.Row, queue_position: int | None) -> TaskAccepted:
        """Build from a stored task."""
        return cls(
            task_id=row["task_id"],
            status=row["status"],
            project_id=row["project_id"],
            estimated_duration=row["estimated_duration"],
            queue_position=queue_position,
            created_at=row["created_at"],
        )


class TaskListItem(TaskStatus):
    """A task in a project listing."""

    task_type: TaskType
    priority: int
    created_at: UtcDateTime

    @classmethod
    def from_row(cls, row: store.Row) -> TaskListItem:
        """Build from a stored task."""
        return cls(
            **cls.fields_from_row(row),
            task_type=row["task_type"],
            priority=row["priority"],
            created_at=row["created_at"],
        )


class TaskPage(BaseModel):
    """One page of a project's tasks, newest first."""

    project_id: str
    tasks: list[TaskListItem]
    page: int
    limit: int
    total: int
    pages: int


class WorkerInfo(BaseModel):
    """One GPU worker process as last reported by its heartbeat."""

    worker_id: str
    worker_type: str
    status: str
    current_task_id: uuid.UUID | None = Field(
        description="Shown only when the task belongs to one of the caller's projects."
    )
    gpu_utilization: float | None
    memory_usage: int | None = Field(description="GPU memory in use, bytes.")
    tasks_completed: int
    last_heartbeat: UtcDateTime


class WorkersStatus(BaseModel):
    """Every registered worker, with totals."""

    workers: list[WorkerInfo]
    total_workers: int
    active_workers: int = Field(description="Workers alive (idle or busy).")
    gpu_utilization: float | None = Field(description="Mean over workers that report it.")


class Health(BaseModel):
    """Overall health and each component's."""

    status: HealthState
    components: dict[str, HealthState]
