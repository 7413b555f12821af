"""X-API-Key authentication: header only, 401 in the common shape otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from api_helpers import SEEDED_KEY, SEEDED_PROJECT, Project, assert_error, submission
from fastapi.testclient import TestClient

from moviegen_dagster import keys

STATUS_URL = "/api/v1/tasks/00000000-0000-0000-0000-000000000000/status"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", STATUS_URL),
        ("GET", "/api/v1/projects/any_project/tasks"),
        ("DELETE", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/cancel"),
        ("POST", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/retry"),
        ("GET", "/api/v1/workers/status"),
    ],
)
def test_missing_key_is_401(client: TestClient, method: str, url: str) -> None:
    body = assert_error(client.request(method, url), 401, "unauthorized", "X-API-Key")
    assert "missing" in body["error"]["message"]


def test_submit_without_key_is_401(client: TestClient, project: Project) -> None:
    resp = client.post("/api/v1/tasks/submit", json=submission(project.project_id))
    assert_error(resp, 401, "unauthorized", "X-API-Key")


def test_wrong_key_is_401(client: TestClient) -> None:
    resp = client.get(STATUS_URL, headers={"X-API-Key": "mg_not_a_real_key"})
    body = assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert body["error"]["message"] == "invalid API key"


def test_other_auth_headers_are_not_keys(client: TestClient, project: Project) -> None:
    resp = client.get(STATUS_URL, headers={"Authorization": f"Bearer {project.key}"})
    assert_error(resp, 401, "unauthorized", "X-API-Key")


@pytest.mark.parametrize("param", ["api_key", "apikey", "X-API-Key", "key", "token"])
def test_key_in_query_string_is_refused(client: TestClient, project: Project, param: str) -> None:
    url = f"/api/v1/projects/{project.project_id}/tasks"
    resp = client.get(url, params={param: project.key})
    body = assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert "header" in body["error"]["message"]
    # Refused even next to a valid header: the key has already leaked into the URL.
    resp = client.get(url, params={param: project.key}, headers=project.headers)
    assert_error(resp, 401, "unauthorized", "X-API-Key")


def test_valid_key_works(client: TestClient, project: Project) -> None:
    resp = client.get(f"/api/v1/projects/{project.project_id}/tasks", headers=project.headers)
    assert resp.status_code == 200


def test_revoked_key_is_401(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    url = f"/api/v1/projects/{project.project_id}/tasks"
    assert client.get(url, headers=project.headers).status_code == 200
    key_id = keys.authenticate(conn, project.key).key_id  # type: ignore[union-attr]
    assert keys.revoke_key(conn, key_id)
    body = assert_error(client.get(url, headers=project.headers), 401, "unauthorized", "X-API-Key")
    assert body["error"]["message"] == "invalid API key"


def test_expired_key_is_401(client: TestClient, conn: psycopg.Connection[Any]) -> None:
    raw = keys.new_key()
    keys.store_key(conn, raw, "expired", "proj_expired", datetime.now(UTC) - timedelta(seconds=1))
    resp = client.get("/api/v1/projects/proj_expired/tasks", headers={"X-API-Key": raw})
    body = assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert body["error"]["message"] == "invalid API key"


def test_admin_key_from_settings_is_seeded(
    client: TestClient, admin_headers: dict[str, str], project: Project
) -> None:
    resp = client.get(f"/api/v1/projects/{project.project_id}/tasks", headers=admin_headers)
    assert resp.status_code == 200


def test_project_keys_from_settings_are_seeded(client: TestClient) -> None:
    headers = {"X-API-Key": SEEDED_KEY}
    resp = client.get(f"/api/v1/projects/{SEEDED_PROJECT}/tasks", headers=headers)
    assert resp.status_code == 200
    resp = client.get("/api/v1/projects/another_project/tasks", headers=headers)
    assert_error(resp, 403, "forbidden", "project_id")


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/api/v1/health").status_code == 200


def test_openapi_declares_the_header_scheme(client: TestClient) -> None:
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A project key covers one project; an admin key covers every project.",
    }


def _submit_as(client: TestClient, project_id: str, **kwargs: Any) -> Any:
    return client.post("/api/v1/tasks/submit", json=submission(project_id), **kwargs)


def _stored(conn: psycopg.Connection[Any], project_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM moviegen.tasks WHERE project_id = %s", (project_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_submit_with_key_in_query_string_is_401_and_stores_nothing(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    resp = _submit_as(
        client, project.project_id, params={"api_key": project.key}, headers=project.headers
    )
    assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert _stored(conn, project.project_id) == 0


def test_submit_with_revoked_or_expired_key_is_401_and_stores_nothing(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    key_id = keys.authenticate(conn, project.key).key_id  # type: ignore[union-attr]
    assert keys.revoke_key(conn, key_id)
    resp = _submit_as(client, project.project_id, headers=project.headers)
    assert_error(resp, 401, "unauthorized", "X-API-Key")
    raw = keys.new_key()
    keys.store_key(conn, raw, "expired", project.project_id, datetime.now(UTC) - timedelta(hours=1))
    resp = _submit_as(client, project.project_id, headers={"X-API-Key": raw})
    assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert _stored(conn, project.project_id) == 0
