"""Idempotency-Key on submit: replays, conflicts, scope, expiry, races and process death."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from api_helpers import ADMIN_KEY, Project, assert_error, set_task, submission
from fastapi.testclient import TestClient
from fault_app import live_api

from moviegen_dagster import idempotency

URL = "/api/v1/tasks/submit"
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def _post(
    client: TestClient | httpx.Client,
    project: Project,
    key: str | bytes | None,
    body: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> Any:
    headers: dict[str, Any] = {"X-API-Key": api_key or project.key}
    if key is not None:
        headers[HEADER] = key
    return client.post(URL, json=body or submission(project.project_id), headers=headers)


def _task_ids(conn: psycopg.Connection[Any], project: Project) -> list[str]:
    rows = conn.execute(
        "SELECT task_id FROM moviegen.tasks WHERE project_id = %s ORDER BY created_at",
        (project.project_id,),
    ).fetchall()
    return [str(r["task_id"]) for r in rows]


def test_same_key_and_body_replays_the_first_answer(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    first = _post(client, project, "order-42")
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers
    again = _post(client, project, "order-42")
    assert again.status_code == 202, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert _task_ids(conn, project) == [first.json()["task_id"]]


def test_replay_answers_as_first_after_the_task_moved_on(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    first = _post(client, project, "k-moved")
    set_task(conn, first.json()["task_id"], status="processing", current_step="generating_image")
    again = _post(client, project, "k-moved")
    assert again.json() == first.json()
    assert again.json()["status"] == "queued"


def test_equivalent_bodies_are_the_same_submission(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    body = submission(project.project_id)
    body.pop("priority")
    first = _post(client, project, "k-equiv", body)
    # Key order differs and the default priority is spelled out: the validated submission
    # (defaults filled in) is what is compared.
    same = {k: body[k] for k in reversed(list(body))} | {"priority": 5}
    again = _post(client, project, "k-equiv", same)
    assert again.status_code == 202
    assert again.headers[REPLAYED] == "true"
    assert again.json()["task_id"] == first.json()["task_id"]


def test_same_key_other_body_is_409(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    first = _post(client, project, "k-conflict")
    other = submission(project.project_id, priority=2)
    resp = _post(client, project, "k-conflict", other)
    body = assert_error(resp, 409, "idempotency_conflict", HEADER)
    assert project.project_id in body["error"]["message"]
    assert _task_ids(conn, project) == [first.json()["task_id"]]


def test_keys_are_scoped_per_project(
    client: TestClient, project: Project, other_project: Project
) -> None:
    mine = _post(client, project, "shared-key")
    theirs = _post(client, other_project, "shared-key")
    assert theirs.status_code == 202
    assert REPLAYED not in theirs.headers
    assert theirs.json()["task_id"] != mine.json()["task_id"]


def test_scope_is_the_project_not_the_api_key(client: TestClient, project: Project) -> None:
    by_admin = _post(client, project, "k-admin", api_key=ADMIN_KEY)
    by_project = _post(client, project, "k-admin")
    assert by_project.headers[REPLAYED] == "true"
    assert by_project.json()["task_id"] == by_admin.json()["task_id"]


def test_without_a_key_every_submission_is_new(client: TestClient, project: Project) -> None:
    ids = {_post(client, project, None).json()["task_id"] for _ in range(2)}
    assert len(ids) == 2


@pytest.mark.parametrize(
    "key",
    ["", " ", " lead", "x" * 256, "café".encode("latin-1"), b"tab\there", b"del\x7f"],
    ids=["empty", "blank", "leading-space", "too-long", "non-ascii", "tab", "control"],
)
def test_bad_key_is_400(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, key: str | bytes
) -> None:
    body = assert_error(_post(client, project, key), 400, "validation_error", HEADER)
    assert "printable ASCII" in body["error"]["message"]
    assert _task_ids(conn, project) == []


def test_longest_key_is_accepted(client: TestClient, project: Project) -> None:
    key = "k" * idempotency.MAX_KEY_LENGTH
    assert _post(client, project, key).status_code == 202
    assert _post(client, project, key).headers[REPLAYED] == "true"


def test_key_is_kept_for_the_ttl_then_free(
    client: TestClient,
    conn: psycopg.Connection[Any],
    project: Project,
    clock: Any,
    configure: Any,
) -> None:
    configure(idempotency_ttl_hours=24)
    first = _post(client, project, "k-ttl").json()["task_id"]
    clock.advance(hours=23, minutes=59, seconds=59)
    assert _post(client, project, "k-ttl").json()["task_id"] == first
    clock.advance(seconds=1)
    # Expired: the key starts afresh, even with another body (no 409).
    resp = _post(client, project, "k-ttl", submission(project.project_id, priority=3))
    assert resp.status_code == 202
    assert REPLAYED not in resp.headers
    second = resp.json()["task_id"]
    assert second != first
    clock.advance(hours=1)
    again = _post(client, project, "k-ttl", submission(project.project_id, priority=3))
    assert again.json()["task_id"] == second
    assert _task_ids(conn, project) == [first, second]


def test_concurrent_requests_with_one_key_make_one_task(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: _post(client, project, "k-race"), range(16)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert sum(a.headers.get(REPLAYED) == "true" for a in answers) == 15
    assert len(_task_ids(conn, project)) == 1


def test_two_api_processes_racing_on_one_key_make_one_task(
    database_url: str, conn: psycopg.Connection[Any], project: Project, tmp_path: Path
) -> None:
    with (
        live_api(database_url, tmp_path / "a", project.key, project.project_id) as one,
        live_api(database_url, tmp_path / "b", project.key, project.project_id) as two,
        httpx.Client(base_url=one.base_url, timeout=30) as c1,
        httpx.Client(base_url=two.base_url, timeout=30) as c2,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        clients = [c1, c2] * 8
        answers = list(pool.map(lambda c: _post(c, project, "k-two-procs"), clients))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert len(_task_ids(conn, project)) == 1


@pytest.mark.parametrize("kill_at", ["before_commit", "after_commit"])
def test_retry_after_the_api_was_killed_mid_request_gets_one_task(
    database_url: str,
    conn: psycopg.Connection[Any],
    project: Project,
    tmp_path: Path,
    kill_at: str,
) -> None:
    with live_api(
        database_url, tmp_path / "dying", project.key, project.project_id, kill_at=kill_at
    ) as dying:
        with pytest.raises(httpx.TransportError):
            _post(httpx.Client(base_url=dying.base_url, timeout=30), project, "k-killed")
        assert dying.proc.wait(timeout=30) == -9
    committed = _task_ids(conn, project)
    assert len(committed) == (1 if kill_at == "after_commit" else 0)
    with (
        live_api(database_url, tmp_path / "next", project.key, project.project_id) as fresh,
        httpx.Client(base_url=fresh.base_url, timeout=30) as retrying,
    ):
        resp = _post(retrying, project, "k-killed")
    assert resp.status_code == 202, resp.text
    assert (resp.headers.get(REPLAYED) == "true") == (kill_at == "after_commit")
    assert _task_ids(conn, project) == [resp.json()["task_id"]]
    uuid.UUID(resp.json()["task_id"])
