"""Pure functions of the API: partition keys, field paths, output conversion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from api.errors import format_loc
from api.schemas import TaskListItem, TaskStatus, partition_key


@pytest.mark.parametrize(
    ("task_type", "metadata", "expected"),
    [
        ("generate_video", {"scene_id": "scene_005", "character_id": "c"}, "proj/scene_005"),
        (
            "generate_image",
            {"scene_id": "s", "character_id": "detective_main"},
            "proj/detective_main",
        ),
        ("process_audio", {"dialogue_id": "scene_005_line_001"}, "proj/scene_005_line_001"),
        ("generate_video", {"character_id": "c"}, "proj/unassigned"),
        ("generate_image", {}, "proj/unassigned"),
        ("process_audio", {"dialogue_id": "../x"}, "proj/unassigned"),
    ],
)
def test_partition_key(task_type: str, metadata: dict[str, Any], expected: str) -> None:
    assert partition_key("proj", task_type, metadata) == expected


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("body", "task_data", "storyboard_images", 0), "task_data.storyboard_images[0]"),
        (("body", "priority"), "priority"),
        (("body",), "body"),
        (("body", 17), "body"),
        (("query", "limit"), "limit"),
        (("path", "project_id"), "project_id"),
        (("body", "a", 0, 1, "b"), "a[0][1].b"),
    ],
)
def test_format_loc(loc: tuple[str | int, ...], expected: str) -> None:
    assert format_loc(loc) == expected


def _row(**overrides: Any) -> dict[str, Any]:
    tokyo = timezone(timedelta(hours=9))
    row: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "project_id": "p",
        "task_type": "generate_image",
        "priority": 3,
        "status": "completed",
        "progress": 0.10000000149011612,  # a `real` column's 0.1
        "current_step": "upload_complete",
        "attempt": 1,
        "result": {"media_url": "u"},
        "error": None,
        "created_at": datetime(2025, 9, 24, 19, 30, tzinfo=tokyo),
        "started_at": datetime(2025, 9, 24, 19, 30, 15, tzinfo=tokyo),
        "completed_at": datetime(2025, 9, 24, 10, 35, 30, 123000, tzinfo=UTC),
        # Storage-only columns must not leak into responses.
        "task_data": {"secret": 1},
        "metadata": {},
        "callback_url": "https://x",
        "run_id": "r",
        "partition_key": "p/unassigned",
    }
    row.update(overrides)
    return row


def test_status_from_row_is_utc_z_and_hides_storage_columns() -> None:
    body = TaskListItem.from_row(_row()).model_dump(mode="json")
    assert body["created_at"] == "2025-09-24T10:30:00Z"
    assert body["started_at"] == "2025-09-24T10:30:15Z"
    assert body["completed_at"] == "2025-09-24T10:35:30.123000Z"
    assert body["progress"] == 0.1
    assert not {"task_data", "metadata", "callback_url", "run_id", "partition_key"} & set(body)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": "run_failed", "message": "boom"}, "boom"),
        ({"code": "run_failed"}, "run_failed"),
        ("plain text", "plain text"),
        (None, None),
    ],
)
def test_failed_error_message(error: Any, expected: str | None) -> None:
    status = TaskStatus.from_row(_row(status="failed", error=error, result={"media_url": "u"}))
    assert status.error == expected
    assert status.result is None
