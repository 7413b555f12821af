"""GET /api/v1/projects/{project_id}/tasks: pages, filters, order, bounds, scope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, set_task, submit
from fastapi.testclient import TestClient

LIST_ITEM_FIELDS = {
    "task_id",
    "project_id",
    "status",
    "progress",
    "current_step",
    "result",
    "error",
    "started_at",
    "completed_at",
    "attempt",
    "parent_task_id",
    "attempts",
    "task_type",
    "priority",
    "created_at",
}


def _list(client: TestClient, project: Project, **params: Any) -> Any:
    url = f"/api/v1/projects/{project.project_id}/tasks"
    return client.get(url, params=params, headers=project.headers)


@pytest.fixture
def five_tasks(client: TestClient, conn: psycopg.Connection[Any], project: Project) -> list[str]:
    """Five tasks created a second apart (oldest first): 3 video, 2 image; one completed."""
    ids = []
    for i, task_type in enumerate(
        ["generate_video", "generate_image", "generate_video", "generate_image", "generate_video"]
    ):
        task_id = submit(client, project, task_type=task_type, metadata={})["task_id"]
        set_task(conn, task_id, created_at=datetime(2025, 9, 24, 10, 0, i, tzinfo=UTC))
        ids.append(task_id)
    set_task(conn, ids[1], status="completed", progress=1.0, completed_at=datetime.now(UTC))
    return ids


def test_page_shape_and_newest_first(
    client: TestClient, project: Project, five_tasks: list[str]
) -> None:
    resp = _list(client, project)
    assert resp.status_code == 200
    body = resp.json()
    assert {k: v for k, v in body.items() if k != "tasks"} == {
        "project_id": project.project_id,
        "page": 1,
        "limit": 20,
        "total": 5,
        "pages": 1,
    }
    assert [t["task_id"] for t in body["tasks"]] == five_tasks[::-1]
    first = body["tasks"][0]
    assert set(first) == LIST_ITEM_FIELDS
    assert first["created_at"] == "2025-09-24T10:00:04Z"
    assert first["priority"] == 1
    assert first["task_type"] == "generate_video"


def test_pagination(client: TestClient, project: Project, five_tasks: list[str]) -> None:
    newest_first = five_tasks[::-1]
    seen = []
    for page in (1, 2, 3):
        body = _list(client, project, page=page, limit=2).json()
        assert (body["page"], body["limit"], body["total"], body["pages"]) == (page, 2, 5, 3)
        seen += [t["task_id"] for t in body["tasks"]]
    assert seen == newest_first
    beyond = _list(client, project, page=4, limit=2).json()
    assert beyond["tasks"] == [] and beyond["total"] == 5


def test_filters(client: TestClient, project: Project, five_tasks: list[str]) -> None:
    body = _list(client, project, status="completed").json()
    assert [t["task_id"] for t in body["tasks"]] == [five_tasks[1]]
    body = _list(client, project, task_type="generate_image").json()
    assert [t["task_id"] for t in body["tasks"]] == [five_tasks[3], five_tasks[1]]
    body = _list(client, project, task_type="generate_video", status="queued").json()
    assert body["total"] == 3
    body = _list(client, project, status="failed").json()
    assert (body["total"], body["pages"], body["tasks"]) == (0, 0, [])
    # Blank filters (as in the contract's `?status=&task_type=`) mean no filter.
    assert _list(client, project, status="", task_type="").json()["total"] == 5


def test_only_this_projects_tasks(
    client: TestClient, project: Project, other_project: Project, five_tasks: list[str]
) -> None:
    submit(client, other_project)
    assert _list(client, other_project).json()["total"] == 1
    assert _list(client, project).json()["total"] == 5


def test_empty_project(client: TestClient, project: Project) -> None:
    body = _list(client, project).json()
    assert (body["total"], body["pages"], body["tasks"]) == (0, 0, [])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": "x"}, "page"),
        ({"page": 1.5}, "page"),
        ({"page": 1_000_001}, "page"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"status": "QUEUED"}, "status"),
        ({"task_type": "generate_music"}, "task_type"),
    ],
)
def test_bad_params_are_400(
    client: TestClient, project: Project, params: dict[str, Any], field: str
) -> None:
    assert_error(_list(client, project, **params), 400, "validation_error", field)


def test_limit_bounds_are_inclusive(client: TestClient, project: Project) -> None:
    assert _list(client, project, limit=1).status_code == 200
    assert _list(client, project, limit=100).status_code == 200


def test_foreign_project_is_403(
    client: TestClient, project: Project, other_project: Project
) -> None:
    url = f"/api/v1/projects/{other_project.project_id}/tasks"
    assert_error(client.get(url, headers=project.headers), 403, "forbidden", "project_id")


def test_admin_lists_any_project(
    client: TestClient, project: Project, admin_headers: dict[str, str], five_tasks: list[str]
) -> None:
    url = f"/api/v1/projects/{project.project_id}/tasks"
    assert client.get(url, headers=admin_headers).json()["total"] == 5


def test_malformed_project_id_is_400(client: TestClient, admin_headers: dict[str, str]) -> None:
    resp = client.get("/api/v1/projects/-bad!/tasks", headers=admin_headers)
    assert_error(resp, 400, "validation_error", "project_id")
