"""Per-project backfill routes: planning (dry run), records, validation, scope."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from api_helpers import ADMIN_KEY, Project, assert_error, set_task, submit
from fastapi.testclient import TestClient

from moviegen_dagster.settings import Settings

# Refused by the URL rules at once (loopback, not allow-listed): "not checked", never stale.
UNREACHABLE = "http://127.0.0.1:9/frame.jpg"


def _post(client: TestClient, project: Project, body: Any, key: str | None = None) -> Any:
    headers = {"X-API-Key": key or project.key}
    return client.post(
        f"/api/v1/projects/{project.project_id}/backfills", json=body, headers=headers
    )


def _video(client: TestClient, project: Project, scene: str) -> str:
    meta = {"scene_id": scene}
    body = submit(client, project, task_type="generate_video", metadata=meta)
    return str(body["task_id"])


@pytest.fixture
def scenes(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, settings: Settings
) -> dict[str, str]:
    """Five scenes, each in one state: failed, cancelled, stale model, current, in progress."""
    ids = {name: _video(client, project, name) for name in ("s_failed", "s_cancel", "s_stale")}
    ids["s_current"] = _video(client, project, "s_current")
    ids["s_running"] = _video(client, project, "s_running")
    set_task(conn, ids["s_failed"], status="failed")
    set_task(conn, ids["s_cancel"], status="cancelled")
    current = {
        "inputs": [{"name": "storyboard_images[0]", "url": UNREACHABLE, "sha256": "0" * 64}],
        "model": settings.video_model_ref(),
        "model_revision": "",
    }
    set_task(conn, ids["s_current"], status="completed", provenance=current)
    old = {**current, "model": "Lightricks/LTX-Video", "model_revision": "v0.9"}
    set_task(conn, ids["s_stale"], status="completed", provenance=old)
    set_task(conn, ids["s_running"], status="processing")
    return ids


def test_dry_run_plans_missing_failed_and_stale_partitions(
    client: TestClient, project: Project, scenes: dict[str, str]
) -> None:
    resp = _post(
        client,
        project,
        {
            "task_types": ["generate_video"],
            "reasons": ["missing", "failed", "stale"],
            "dry_run": True,
        },
    )
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["dry_run"] is True and doc["progress"]["state"] == "dry_run"
    assert doc["progress"]["planned"] == 3 and doc["progress"]["created"] == 0
    assert doc["dagster_backfill_ids"] == [] and doc["tasks"] == []
    by_subject = {i["subject"]: i for i in doc["items"]}
    assert set(by_subject) == {"s_failed", "s_cancel", "s_stale"}
    assert by_subject["s_failed"]["reasons"] == ["failed"]
    assert by_subject["s_cancel"]["reasons"] == ["missing"]
    assert by_subject["s_stale"]["reasons"] == ["stale"]
    assert any("model changed" in d for d in by_subject["s_stale"]["details"])
    assert any("not checked" in d for d in by_subject["s_stale"]["details"])
    for subject, item in by_subject.items():
        assert item["parent_task_id"] == scenes[subject]
        assert item["partition_key"] == f"{project.project_id}/{subject}"
        assert item["asset"] == "scene_video"

    # The dry run is recorded: readable, listed, and it launched nothing.
    url = f"/api/v1/projects/{project.project_id}/backfills"
    got = client.get(f"{url}/{doc['backfill_id']}", headers=project.headers)
    assert got.status_code == 200 and got.json()["items"] == doc["items"]
    listing = client.get(url, headers=project.headers).json()
    assert listing["total"] == 1 and listing["backfills"][0]["backfill_id"] == doc["backfill_id"]


def test_reasons_and_subjects_narrow_the_plan(
    client: TestClient, project: Project, scenes: dict[str, str]
) -> None:
    only_failed = _post(client, project, {"reasons": ["failed"], "dry_run": True}).json()
    assert [i["subject"] for i in only_failed["items"]] == ["s_failed"]
    picked = _post(
        client,
        project,
        {"scenes": ["s_stale", "s_current"], "reasons": ["stale", "missing"], "dry_run": True},
    ).json()
    assert [i["subject"] for i in picked["items"]] == ["s_stale"]
    # No image or audio tasks in these partitions: nothing to backfill for those types.
    images = _post(client, project, {"task_types": ["generate_image"], "dry_run": True}).json()
    assert images["items"] == [] and images["progress"]["planned"] == 0


def test_launch_without_dagster_is_recorded_and_answers_503(
    client: TestClient, project: Project, scenes: dict[str, str]
) -> None:
    resp = _post(client, project, {"reasons": ["failed"]})
    assert_error(resp, 503, "unavailable")
    listing = client.get(
        f"/api/v1/projects/{project.project_id}/backfills", headers=project.headers
    ).json()
    record = listing["backfills"][0]
    assert record["progress"]["state"] == "launch_failed" and record["error"]
    # Nothing to do is not an error.
    nothing = _post(client, project, {"reasons": ["failed"], "scenes": ["s_current"]})
    assert nothing.status_code == 200
    assert nothing.json()["progress"]["state"] == "nothing_to_do"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_types": ["render_3d"]}, "task_types[0]"),
        ({"task_types": []}, "task_types"),
        ({"reasons": ["outdated"]}, "reasons[0]"),
        ({"scenes": ["../etc"]}, "scenes[0]"),
        ({"subjects": "scene_1"}, "subjects"),
        ({"scenes": ["a"], "subjects": ["b"]}, "subjects"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"force": True}, "force"),
    ],
)
def test_bad_selections_answer_400_naming_the_field(
    client: TestClient, project: Project, body: dict[str, Any], field: str
) -> None:
    assert_error(_post(client, project, body), 400, "validation_error", field)


def test_scope_other_projects_and_unknown_ids(
    client: TestClient, project: Project, other_project: Project, scenes: dict[str, str]
) -> None:
    mine = _post(client, project, {"dry_run": True}).json()
    # Another project's key cannot plan, list or read this project's backfills.
    assert_error(
        _post(client, project, {"dry_run": True}, key=other_project.key),
        403,
        "forbidden",
        "project_id",
    )
    base = f"/api/v1/projects/{project.project_id}/backfills"
    assert_error(client.get(base, headers=other_project.headers), 403, "forbidden", "project_id")
    # Under its own project path, a foreign backfill id answers exactly like an unknown one.
    foreign = client.get(
        f"/api/v1/projects/{other_project.project_id}/backfills/{mine['backfill_id']}",
        headers=other_project.headers,
    )
    unknown = client.get(
        f"/api/v1/projects/{other_project.project_id}/backfills/{uuid.uuid4()}",
        headers=other_project.headers,
    )
    malformed = client.get(
        f"/api/v1/projects/{other_project.project_id}/backfills/not-a-uuid",
        headers=other_project.headers,
    )
    assert_error(foreign, 404, "not_found")
    assert foreign.json() == unknown.json() == malformed.json()
    # The admin key covers every project; no key is 401.
    admin = client.get(f"{base}/{mine['backfill_id']}", headers={"X-API-Key": ADMIN_KEY})
    assert admin.status_code == 200
    assert_error(client.get(base), 401, "unauthorized", "X-API-Key")


def test_status_documents_carry_parent_task_id(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    parent = _video(client, project, "s_parent")
    child = _video(client, project, "s_parent")
    set_task(conn, child, parent_task_id=uuid.UUID(parent))
    status = client.get(f"/api/v1/tasks/{child}/status", headers=project.headers).json()
    assert status["parent_task_id"] == parent
    first = client.get(f"/api/v1/tasks/{parent}/status", headers=project.headers).json()
    assert first["parent_task_id"] is None
    listing = client.get(
        f"/api/v1/projects/{project.project_id}/tasks", headers=project.headers
    ).json()
    assert {t["task_id"]: t["parent_task_id"] for t in listing["tasks"]} == {
        child: parent,
        parent: None,
    }
