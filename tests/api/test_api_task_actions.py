"""Status, cancel and retry of one task; other projects' tasks look like unknown ones."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, set_task, submit
from fastapi.testclient import TestClient

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATUS_FIELDS = {
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
}
RESULT = {
    "media_url": "http://127.0.0.1:8001/media/p/videos/x.mp4",
    "payload_media_id": None,
    "metadata": {"duration": 7.0, "resolution": "1920x1080", "fps": 24},
}


def _status(client: TestClient, project: Project, task_id: str) -> Any:
    return client.get(f"/api/v1/tasks/{task_id}/status", headers=project.headers)


def test_queued_status(client: TestClient, project: Project) -> None:
    task_id = submit(client, project)["task_id"]
    resp = _status(client, project, task_id)
    assert resp.status_code == 200
    assert resp.json() == {
        "task_id": task_id,
        "project_id": project.project_id,
        "status": "queued",
        "progress": 0.0,
        "current_step": "waiting_in_queue",
        "result": None,
        "error": None,
        "started_at": None,
        "completed_at": None,
        "attempt": 1,
        "attempts": [],
        "parent_task_id": None,
    }


def test_processing_status_hides_a_result_stored_early(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    task_id = submit(client, project)["task_id"]
    set_task(
        conn,
        task_id,
        status="processing",
        progress=0.75,
        current_step="rendering_video",
        started_at=datetime(2025, 9, 24, 10, 30, 15, tzinfo=UTC),
        result=RESULT,
    )
    body = _status(client, project, task_id).json()
    assert body["status"] == "processing"
    assert body["progress"] == 0.75
    assert body["current_step"] == "rendering_video"
    assert body["result"] is None
    assert body["started_at"] == "2025-09-24T10:30:15Z"


def test_completed_status(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    task_id = submit(client, project)["task_id"]
    set_task(
        conn,
        task_id,
        status="completed",
        progress=1.0,
        current_step="upload_complete",
        result=RESULT,
        started_at=datetime(2025, 9, 24, 10, 30, 15, tzinfo=UTC),
        completed_at=datetime(2025, 9, 24, 10, 35, 30, 250000, tzinfo=UTC),
    )
    body = _status(client, project, task_id).json()
    assert set(body) == STATUS_FIELDS
    assert body["result"] == RESULT
    assert body["progress"] == 1.0
    assert body["completed_at"] == "2025-09-24T10:35:30.250000Z"
    assert ISO_Z.match(body["completed_at"])


def test_failed_status_gives_the_error_message(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    task_id = submit(client, project)["task_id"]
    error = {"code": "gpu_out_of_memory", "message": "CUDA out of memory"}
    set_task(conn, task_id, status="failed", error=error, completed_at=datetime.now(UTC))
    body = _status(client, project, task_id).json()
    assert body["status"] == "failed"
    assert body["error"] == "CUDA out of memory"
    assert body["result"] is None


@pytest.mark.parametrize("action", ["status", "cancel", "retry"])
def test_unknown_malformed_and_foreign_ids_answer_identically(
    client: TestClient, project: Project, other_project: Project, action: str
) -> None:
    foreign = submit(client, other_project)["task_id"]
    method = {"status": "GET", "cancel": "DELETE", "retry": "POST"}[action]
    bodies = []
    for task_id in (
        "6f1c3a52-0b8e-4d59-9c1e-0a6a2f4c9e11",  # unknown
        "not-a-uuid",  # malformed
        "6F1C3A52-0B8E-4D59-9C1E-0A6A2F4C9E1",  # malformed (short)
        foreign,  # another project's
    ):
        resp = client.request(method, f"/api/v1/tasks/{task_id}/{action}", headers=project.headers)
        assert_error(resp, 404, "not_found")
        bodies.append(resp.content)
    assert len(set(bodies)) == 1
    # The owner and the admin do see it.
    assert _status(client, other_project, foreign).status_code == 200


def test_admin_sees_every_project(
    client: TestClient, project: Project, admin_headers: dict[str, str]
) -> None:
    task_id = submit(client, project)["task_id"]
    resp = client.get(f"/api/v1/tasks/{task_id}/status", headers=admin_headers)
    assert resp.status_code == 200


def test_cancel_queued_task(client: TestClient, project: Project) -> None:
    task_id = submit(client, project)["task_id"]
    resp = client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers)
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == STATUS_FIELDS
    assert body["status"] == "cancelled"
    assert ISO_Z.match(body["completed_at"])
    # Cancelling again is harmless and answers the same state.
    again = client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"


@pytest.mark.parametrize("state", ["completed", "failed"])
def test_cancel_finished_task_is_409(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, state: str
) -> None:
    task_id = submit(client, project)["task_id"]
    set_task(conn, task_id, status=state, completed_at=datetime.now(UTC))
    resp = client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers)
    body = assert_error(resp, 409, "conflict")
    assert state in body["error"]["message"]


def test_retry_failed_task(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    task_id = submit(client, project)["task_id"]
    set_task(
        conn,
        task_id,
        status="failed",
        error={"code": "x", "message": "boom"},
        completed_at=datetime.now(UTC),
    )
    resp = client.post(f"/api/v1/tasks/{task_id}/retry", headers=project.headers)
    assert resp.status_code == 202
    body = resp.json()
    assert set(body) == STATUS_FIELDS
    assert body["task_id"] == task_id
    assert body["status"] == "queued"
    assert body["attempt"] == 2
    assert body["error"] is None


@pytest.mark.parametrize("state", ["queued", "completed", "cancelled"])
def test_retry_unfailed_task_is_409(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, state: str
) -> None:
    task_id = submit(client, project)["task_id"]
    set_task(conn, task_id, status=state)
    resp = client.post(f"/api/v1/tasks/{task_id}/retry", headers=project.headers)
    assert_error(resp, 409, "conflict")


def test_wrong_methods_are_405(client: TestClient, project: Project) -> None:
    task_id = submit(client, project)["task_id"]
    resp = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers)
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "DELETE"
    resp = client.get("/api/v1/tasks/submit", headers=project.headers)
    assert_error(resp, 405, "method_not_allowed")
