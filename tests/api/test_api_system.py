"""Health, workers, and 503 when the database is unreachable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, submit
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from moviegen_dagster import dispatch


def test_health_healthy(client: TestClient, dispatcher: Any) -> None:
    dispatcher.health_override = {"broker": "healthy", "daemon": "healthy", "workers": "healthy"}
    resp = client.get("/api/v1/health")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "healthy",
        "components": {
            "database": "healthy",
            "broker": "healthy",
            "daemon": "healthy",
            "workers": "healthy",
        },
    }


def test_health_degraded_still_accepts(client: TestClient, dispatcher: Any) -> None:
    dispatcher.health_override = {"broker": "degraded", "workers": "unhealthy"}
    resp = client.get("/api/v1/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "degraded"


def test_health_database_down_is_503(client: TestClient, dispatcher: Any) -> None:
    dispatcher.health_override = {"database": "unhealthy", "broker": "healthy"}
    resp = client.get("/api/v1/health")
    assert resp.status_code == 503
    assert resp.json() == {
        "status": "unhealthy",
        "components": {"database": "unhealthy", "broker": "healthy"},
    }


@pytest.mark.parametrize(
    "exc", [dispatch.Unavailable("db down"), psycopg.OperationalError("connection refused")]
)
def test_health_when_the_dispatcher_cannot_reach_the_database(
    client: TestClient, dispatcher: Any, exc: Exception
) -> None:
    dispatcher.fail_with = exc
    resp = client.get("/api/v1/health")
    assert resp.status_code == 503
    assert resp.json() == {"status": "unhealthy", "components": {"database": "unhealthy"}}


@pytest.fixture
def dead_database(client: TestClient) -> Iterator[None]:
    """Swap the app's pool for one pointing at a closed port (a database that is down)."""
    app: Any = client.app
    real = app.state.pool
    dead = ConnectionPool(
        "postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1, timeout=0.3, open=True
    )
    app.state.pool = dead
    try:
        yield
    finally:
        app.state.pool = real
        dead.close()


def test_database_down_is_503(client: TestClient, project: Project, dead_database: None) -> None:
    resp = client.get(f"/api/v1/projects/{project.project_id}/tasks", headers=project.headers)
    body = assert_error(resp, 503, "unavailable")
    assert resp.headers["retry-after"] == "5"
    assert "127.0.0.1" not in body["error"]["message"]


def test_dispatcher_unavailable_is_503(
    client: TestClient, project: Project, dispatcher: Any
) -> None:
    dispatcher.fail_with = dispatch.Unavailable("broker down")
    resp = client.post(
        "/api/v1/tasks/submit",
        json={
            "project_id": project.project_id,
            "task_type": "generate_image",
            "task_data": {"character_description": "a detective"},
        },
        headers=project.headers,
    )
    body = assert_error(resp, 503, "unavailable")
    assert "broker down" not in body["error"]["message"]


def test_unexpected_error_is_a_generic_500(
    client: TestClient, project: Project, dispatcher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = submit(client, project)["task_id"]
    dispatcher.fail_with = RuntimeError("secret internals at /srv/app.py line 3")
    # Not as a context manager: that would run the lifespan (and a new pool) a second time.
    raw = TestClient(client.app, raise_server_exceptions=False)
    resp = raw.get(f"/api/v1/tasks/{task_id}/status", headers=project.headers)
    body = assert_error(resp, 500, "internal_error")
    assert body["error"]["message"] == "internal error"
    assert "secret" not in resp.text and "Traceback" not in resp.text
    assert any("secret internals" in str(r.exc_info) for r in caplog.records if r.exc_info)


def _add_worker(conn: psycopg.Connection[Any], worker_id: str, **columns: Any) -> None:
    values = {
        "worker_id": worker_id,
        "worker_type": "gpu_heavy",
        "hostname": "host",
        "pid": 1,
        "status": "idle",
        "tasks_completed": 0,
        "last_heartbeat": datetime(2025, 9, 24, 10, 35, tzinfo=UTC),
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    conn.execute(f"INSERT INTO moviegen.workers ({names}) VALUES ({marks})", list(values.values()))


@pytest.fixture
def workers(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, other_project: Project
) -> Iterator[dict[str, str]]:
    """Three workers: one busy on `project`, one busy on `other_project`, one offline."""
    mine = submit(client, project)["task_id"]
    theirs = submit(client, other_project)["task_id"]
    conn.execute("DELETE FROM moviegen.workers")
    _add_worker(
        conn,
        "worker-gpu-001",
        status="busy",
        current_task_id=uuid.UUID(mine),
        gpu_utilization=0.85,
        memory_usage=12_884_901_888,
        tasks_completed=47,
    )
    _add_worker(
        conn,
        "worker-gpu-002",
        worker_type="gpu_light",
        status="busy",
        current_task_id=uuid.UUID(theirs),
        gpu_utilization=0.5,
    )
    _add_worker(conn, "worker-gpu-003", status="offline")
    yield {"mine": mine, "theirs": theirs}
    conn.execute("DELETE FROM moviegen.workers")


def test_workers_status(client: TestClient, project: Project, workers: dict[str, str]) -> None:
    resp = client.get("/api/v1/workers/status", headers=project.headers)
    assert resp.status_code == 200
    body = resp.json()
    assert (body["total_workers"], body["active_workers"]) == (3, 2)
    assert body["gpu_utilization"] == pytest.approx(0.675)
    first = body["workers"][0]
    assert first == {
        "worker_id": "worker-gpu-001",
        "worker_type": "gpu_heavy",
        "status": "busy",
        "current_task_id": workers["mine"],
        "gpu_utilization": pytest.approx(0.85),
        "memory_usage": 12_884_901_888,
        "tasks_completed": 47,
        "last_heartbeat": "2025-09-24T10:35:00Z",
    }
    # Another project's task is not shown; the worker still is.
    assert body["workers"][1]["status"] == "busy"
    assert body["workers"][1]["current_task_id"] is None
    assert body["workers"][2]["gpu_utilization"] is None


def test_admin_sees_every_current_task(
    client: TestClient, admin_headers: dict[str, str], workers: dict[str, str]
) -> None:
    body = client.get("/api/v1/workers/status", headers=admin_headers).json()
    assert [w["current_task_id"] for w in body["workers"]] == [
        workers["mine"],
        workers["theirs"],
        None,
    ]


def test_no_workers(client: TestClient, conn: psycopg.Connection[Any], project: Project) -> None:
    conn.execute("DELETE FROM moviegen.workers")
    body = client.get("/api/v1/workers/status", headers=project.headers).json()
    assert body == {"workers": [], "total_workers": 0, "active_workers": 0, "gpu_utilization": None}
