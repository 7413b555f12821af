"""keys.rotate_key: a new key for the same project and name, the old one valid for a grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, submission
from fastapi.testclient import TestClient

from moviegen_dagster import keys


def _listing(client: TestClient, project_id: str, raw: str) -> int:
    url = f"/api/v1/projects/{project_id}/tasks"
    return client.get(url, headers={"X-API-Key": raw}).status_code


def _key_row(conn: psycopg.Connection[Any], key_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT key_id, name, project_id, expires_at, revoked_at FROM moviegen.api_keys "
        "WHERE key_id = %s",
        (key_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def _key_id(conn: psycopg.Connection[Any], raw: str) -> int:
    caller = keys.authenticate(conn, raw)
    assert caller is not None
    return caller.key_id


def test_both_keys_work_during_the_grace_then_only_the_new_one(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    old_id = _key_id(conn, project.key)
    before = datetime.now(UTC)
    new_raw = keys.rotate_key(conn, old_id, timedelta(hours=2))
    assert new_raw != project.key and new_raw.startswith("mg_")
    new_id = _key_id(conn, new_raw)
    old, new = _key_row(conn, old_id), _key_row(conn, new_id)
    assert (new["name"], new["project_id"]) == (old["name"], old["project_id"])
    assert new["expires_at"] is None and new["revoked_at"] is None
    assert before + timedelta(hours=2) <= old["expires_at"]
    assert old["expires_at"] <= datetime.now(UTC) + timedelta(hours=2)
    for raw in (project.key, new_raw):
        assert _listing(client, project.project_id, raw) == 200
        resp = client.post(
            "/api/v1/tasks/submit",
            json=submission(project.project_id),
            headers={"X-API-Key": raw},
        )
        assert resp.status_code == 202, resp.text
    # The grace is over (set in the past rather than waited for).
    conn.execute(
        "UPDATE moviegen.api_keys SET expires_at = now() - interval '1 second' WHERE key_id = %s",
        (old_id,),
    )
    resp = client.get(
        f"/api/v1/projects/{project.project_id}/tasks", headers={"X-API-Key": project.key}
    )
    assert_error(resp, 401, "unauthorized", "X-API-Key")
    assert _listing(client, project.project_id, new_raw) == 200


def test_zero_grace_retires_the_old_key_at_once(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    new_raw = keys.rotate_key(conn, _key_id(conn, project.key), timedelta(0))
    assert _listing(client, project.project_id, project.key) == 401
    assert _listing(client, project.project_id, new_raw) == 200


def test_rotation_keeps_the_lifetime(conn: psycopg.Connection[Any]) -> None:
    raw = keys.new_key()
    ends = datetime.now(UTC) + timedelta(hours=1)
    key_id = keys.store_key(conn, raw, "short-lived", "proj_rotate_life", ends)
    new_raw = keys.rotate_key(conn, key_id, timedelta(days=3))
    # The new key ends when the old one would have; the grace does not extend the old one.
    assert _key_row(conn, _key_id(conn, new_raw))["expires_at"] == ends
    assert _key_row(conn, key_id)["expires_at"] == ends


def test_an_admin_key_rotates_to_an_admin_key(conn: psycopg.Connection[Any]) -> None:
    raw = keys.new_key()
    key_id = keys.store_key(conn, raw, "ops-admin", None)
    new_caller = keys.authenticate(conn, keys.rotate_key(conn, key_id, timedelta(minutes=5)))
    assert new_caller is not None and new_caller.is_admin and new_caller.name == "ops-admin"


def test_revoked_expired_and_unknown_keys_cannot_be_rotated(
    conn: psycopg.Connection[Any], project: Project
) -> None:
    key_id = _key_id(conn, project.key)
    assert keys.revoke_key(conn, key_id)
    with pytest.raises(LookupError):
        keys.rotate_key(conn, key_id, timedelta(hours=1))
    expired = keys.store_key(
        conn, keys.new_key(), "gone", "proj_gone", datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(LookupError):
        keys.rotate_key(conn, expired, timedelta(hours=1))
    with pytest.raises(LookupError):
        keys.rotate_key(conn, 2**62, timedelta(hours=1))
    count = conn.execute(
        "SELECT count(*) AS n FROM moviegen.api_keys WHERE project_id = %s",
        (project.project_id,),
    ).fetchone()
    assert count is not None and count["n"] == 1  # nothing was issued


def test_negative_grace_is_refused(conn: psycopg.Connection[Any], project: Project) -> None:
    with pytest.raises(ValueError, match="grace"):
        keys.rotate_key(conn, _key_id(conn, project.key), timedelta(seconds=-1))
    assert keys.authenticate(conn, project.key) is not None
