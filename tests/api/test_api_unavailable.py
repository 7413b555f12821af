"""503 in the common shape, never a traceback, whenever a backing service is unreachable."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from api_helpers import Project, assert_error, set_task, submission, submit
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from api.main import create_app
from moviegen_dagster import keys, limits
from moviegen_dagster.settings import Settings

_DAGSTER = httpx.Request("POST", "http://127.0.0.1:3000/graphql")


def _chained() -> Exception:
    """An unrelated error type raised from a refused connection (as libraries wrap them)."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("could not talk to storage") from inner
    except RuntimeError as outer:
        return outer


def _sqlalchemy_error() -> Exception:
    """What Dagster's PostgreSQL storage raises when the server is down."""
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, Exception("connection refused"))


# Each of these, raised by the dispatcher, means "try again later".
UNAVAILABLE_FAULTS = {
    "redis-connection": lambda: redis.exceptions.ConnectionError("Error 111 connecting"),
    "redis-timeout": lambda: redis.exceptions.TimeoutError("Timeout reading from socket"),
    "redis-busy-loading": lambda: redis.exceptions.BusyLoadingError("loading the dataset"),
    "dagster-refused": lambda: httpx.ConnectError("All connection attempts failed"),
    "dagster-timeout": lambda: httpx.ReadTimeout("timed out", request=_DAGSTER),
    "dagster-502": lambda: httpx.HTTPStatusError(
        "bad gateway", request=_DAGSTER, response=httpx.Response(502, request=_DAGSTER)
    ),
    "pool-timeout": lambda: PoolTimeout("couldn't get a connection after 5.00 sec"),
    "socket-refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "socket-timeout": lambda: TimeoutError("timed out"),
    "wrapped": _chained,
    "dagster-storage": _sqlalchemy_error,
}


def _raw(client: TestClient) -> TestClient:
    """A client on the same app that returns 500s instead of raising them."""
    # Not as a context manager: that would run the lifespan (and a new pool) a second time.
    return TestClient(client.app, raise_server_exceptions=False)


def _call(client: TestClient, project: Project, route: str, task_id: str) -> Any:
    if route == "submit":
        return client.post(
            "/api/v1/tasks/submit",
            json=submission(project.project_id),
            headers={**project.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"},
        )
    if route == "status":
        return client.get(f"/api/v1/tasks/{task_id}/status", headers=project.headers)
    if route == "cancel":
        return client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers)
    if route == "retry":
        return client.post(f"/api/v1/tasks/{task_id}/retry", headers=project.headers)
    return client.get("/api/v1/workers/status", headers=project.headers)


def _assert_503(resp: Any) -> None:
    body = assert_error(resp, 503, "unavailable")
    assert resp.headers["retry-after"] == "5"
    assert "Traceback" not in resp.text
    assert "111" not in body["error"]["message"] and "127.0.0.1" not in body["error"]["message"]


@pytest.mark.parametrize("fault", sorted(UNAVAILABLE_FAULTS))
@pytest.mark.parametrize("route", ["submit", "status", "cancel", "retry", "workers"])
def test_unreachable_backend_is_503_on_every_route(
    client: TestClient, dispatcher: Any, project: Project, route: str, fault: str
) -> None:
    task_id = submit(client, project)["task_id"]
    dispatcher.fail_with = UNAVAILABLE_FAULTS[fault]()
    _assert_503(_call(_raw(client), project, route, task_id))


def test_a_dagster_4xx_is_a_plain_500(
    client: TestClient, dispatcher: Any, project: Project
) -> None:
    task_id = submit(client, project)["task_id"]
    dispatcher.fail_with = httpx.HTTPStatusError(
        "bad request", request=_DAGSTER, response=httpx.Response(400, request=_DAGSTER)
    )
    resp = _call(_raw(client), project, "cancel", task_id)
    assert_error(resp, 500, "internal_error")


def test_a_failed_submit_leaves_no_task_and_no_key(
    client: TestClient, conn: psycopg.Connection[Any], dispatcher: Any, project: Project
) -> None:
    dispatcher.fail_with = psycopg.OperationalError("server closed the connection")
    headers = {**project.headers, "Idempotency-Key": "k-down"}
    body = submission(project.project_id)
    _assert_503(client.post("/api/v1/tasks/submit", json=body, headers=headers))
    resp = client.post("/api/v1/tasks/submit", json=body, headers=headers)
    assert resp.status_code == 202
    assert "idempotent-replayed" not in resp.headers


# -- the real dispatcher, with dagster-webserver and Redis down ------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def orchestrator_down(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app with its own dispatch.Dispatcher; nothing listens for Dagster or Redis."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    real = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
            "dagster_port": _closed_port(),
        }
    )
    with TestClient(create_app(real), raise_server_exceptions=False) as test_client:
        yield test_client


def test_cancel_and_retry_with_dagster_down_are_503(
    orchestrator_down: TestClient, conn: psycopg.Connection[Any]
) -> None:
    client = orchestrator_down
    raw = keys.new_key()
    keys.store_key(conn, raw, "down", "proj_down")
    project = Project("proj_down", raw)
    # Accepted all the same: the task is stored and the reconciler will launch it.
    task_id = submit(client, project)["task_id"]
    set_task(conn, task_id, status="processing", run_id="run-that-dagster-would-know")
    _assert_503(client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=project.headers))
    assert (
        client.get(f"/api/v1/tasks/{task_id}/status", headers=project.headers).json()["status"]
        == "processing"
    )
    set_task(conn, task_id, status="failed", error={"code": "run_failed", "message": "boom"})
    _assert_503(client.post(f"/api/v1/tasks/{task_id}/retry", headers=project.headers))
    status = client.get(f"/api/v1/tasks/{task_id}/status", headers=project.headers).json()
    assert (status["status"], status["attempt"]) == ("failed", 1)
    # Redis down only degrades health: tasks can still be accepted.
    health = client.get("/api/v1/health")
    assert health.status_code == 200
    assert health.json()["components"]["broker"] == "degraded"


def test_a_stuck_submit_of_the_same_project_is_503_not_a_hang(
    client: TestClient,
    database_url: str,
    project: Project,
    other_project: Project,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(database_url) as holder:
        # Another transaction sits on the project's submit lock (a stuck API process).
        holder.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (limits.PROJECT_LOCK_NAMESPACE, project.project_id),
        )
        _assert_503(_call(client, project, "submit", ""))
        # Other projects do not wait for it.
        assert _call(client, other_project, "submit", "").status_code == 202
    assert _call(client, project, "submit", "").status_code == 202
