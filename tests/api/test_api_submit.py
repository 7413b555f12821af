"""POST /api/v1/tasks/submit: the accepted shape and every way a submission is refused."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, submission, submit
from fastapi.testclient import TestClient

URL = "/api/v1/tasks/submit"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _post(client: TestClient, project: Project, body: Any) -> Any:
    # Python's own encoder (ASCII escapes, NaN allowed) so lone surrogates and NaN reach the API.
    headers = {**project.headers, "Content-Type": "application/json"}
    return client.post(URL, content=json.dumps(body).encode(), headers=headers)


def test_accepted_shape(client: TestClient, project: Project) -> None:
    resp = _post(client, project, submission(project.project_id))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert set(body) == {
        "task_id",
        "status",
        "project_id",
        "estimated_duration",
        "queue_position",
        "created_at",
    }
    uuid.UUID(body["task_id"])
    assert body["status"] == "queued"
    assert body["project_id"] == project.project_id
    assert isinstance(body["estimated_duration"], int) and body["estimated_duration"] > 0
    assert isinstance(body["queue_position"], int) and body["queue_position"] >= 1
    assert ISO_Z.match(body["created_at"]), body["created_at"]
    assert resp.headers["location"] == f"/api/v1/tasks/{body['task_id']}/status"


def test_stored_request(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    body = submission(project.project_id)
    task_id = submit(client, project)["task_id"]
    row = conn.execute(
        "SELECT * FROM moviegen.tasks WHERE task_id = %s", (uuid.UUID(task_id),)
    ).fetchone()
    assert row is not None
    # Stored normalised: the submitted fields plus the type's documented defaults.
    assert row["task_data"] == {
        **body["task_data"],
        "duration": 7.0,
        "resolution": "1920x1080",
        "fps": 24,
        "character_positions": [],
        "audio_cues": [],
    }
    assert row["metadata"] == body["metadata"]
    assert row["callback_url"] == body["callback_url"]
    assert row["priority"] == 1
    assert row["partition_key"] == f"{project.project_id}/scene_005"


def test_defaults(client: TestClient, conn: psycopg.Connection[Any], project: Project) -> None:
    body = {
        "project_id": project.project_id,
        "task_type": "process_audio",
        "task_data": {
            "text": "I have been expecting you, detective.",
            "character_voice_profile": "https://example.com/detective_voice.wav",
        },
    }
    task_id = _post(client, project, body).json()["task_id"]
    row = conn.execute(
        "SELECT priority, metadata, callback_url, partition_key FROM moviegen.tasks "
        "WHERE task_id = %s",
        (uuid.UUID(task_id),),
    ).fetchone()
    assert row == {
        "priority": 5,
        "metadata": {},
        "callback_url": None,
        "partition_key": f"{project.project_id}/unassigned",
    }


def test_queue_position_follows_priority(client: TestClient, project: Project) -> None:
    # Other tests' queued image/audio tasks share the queue; compare positions, not values.
    low1 = submit(client, project, task_type="generate_image", priority=9, metadata={})
    low2 = submit(client, project, task_type="generate_image", priority=9, metadata={})
    urgent = submit(client, project, task_type="generate_image", priority=1, metadata={})
    assert low2["queue_position"] == low1["queue_position"] + 1
    assert urgent["queue_position"] < low2["queue_position"]


def test_foreign_project_is_403(
    client: TestClient, project: Project, other_project: Project
) -> None:
    resp = _post(client, project, submission(other_project.project_id))
    assert_error(resp, 403, "forbidden", "project_id")


def test_admin_submits_for_any_project(
    client: TestClient, admin_headers: dict[str, str], project: Project
) -> None:
    resp = client.post(URL, json=submission(project.project_id), headers=admin_headers)
    assert resp.status_code == 202
    assert resp.json()["project_id"] == project.project_id


def test_malformed_json_is_400(client: TestClient, project: Project) -> None:
    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=b'{"project_id": ', headers=headers)
    assert_error(resp, 400, "invalid_json", "body")


def test_invalid_utf8_is_400(client: TestClient, project: Project) -> None:
    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=b'{"project_id": "\xff"}', headers=headers)
    assert resp.status_code == 400
    assert set(resp.json()["error"]) == {"code", "message", "field"}


@pytest.mark.parametrize("payload", ["[]", '"text"', "42", "null"])
def test_body_must_be_an_object(client: TestClient, project: Project, payload: str) -> None:
    headers = {**project.headers, "Content-Type": "application/json"}
    resp = client.post(URL, content=payload.encode(), headers=headers)
    assert_error(resp, 400, "validation_error", "body")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_non_json_content_type_is_415(
    client: TestClient, project: Project, content_type: str | None
) -> None:
    headers = dict(project.headers)
    if content_type:
        headers["Content-Type"] = content_type
    payload = json.dumps(submission(project.project_id)).encode()
    resp = client.post(URL, content=payload, headers=headers)
    assert_error(resp, 415, "unsupported_media_type", "Content-Type")


def test_json_with_charset_is_accepted(client: TestClient, project: Project) -> None:
    headers = {**project.headers, "Content-Type": "application/json; charset=utf-8"}
    payload = json.dumps(submission(project.project_id)).encode()
    assert client.post(URL, content=payload, headers=headers).status_code == 202


@pytest.mark.parametrize("field", ["project_id", "task_type", "task_data"])
def test_missing_field_is_400(client: TestClient, project: Project, field: str) -> None:
    body = submission(project.project_id)
    del body[field]
    resp = _post(client, project, body)
    err = assert_error(resp, 400, "validation_error", field)
    assert err["error"]["message"] == f"{field}: field required"


@pytest.mark.parametrize("field", ["status", "task_id", "created_at", "prority"])
def test_unknown_field_is_400(client: TestClient, project: Project, field: str) -> None:
    resp = _post(client, project, submission(project.project_id, **{field: "x"}))
    err = assert_error(resp, 400, "validation_error", field)
    assert err["error"]["message"] == f"{field}: unknown field"


@pytest.mark.parametrize("priority", [0, 11, -1, "1", True, False, 1.5, 5.0, None, [1]])
def test_bad_priority_is_400(client: TestClient, project: Project, priority: Any) -> None:
    resp = _post(client, project, submission(project.project_id, priority=priority))
    assert_error(resp, 400, "validation_error", "priority")


@pytest.mark.parametrize("priority", [1, 10])
def test_priority_bounds_are_inclusive(client: TestClient, project: Project, priority: int) -> None:
    resp = _post(client, project, submission(project.project_id, priority=priority))
    assert resp.status_code == 202


@pytest.mark.parametrize(
    "project_id",
    ["", "-leading-dash", "has space", "a/b", "..", "ümlaut", "x" * 65, 123, None, "p\n"],
)
def test_bad_project_id_is_400(
    client: TestClient, admin_headers: dict[str, str], project_id: Any
) -> None:
    # With the admin key so the 400 cannot be a scope refusal in disguise.
    resp = client.post(URL, json=submission(project_id), headers=admin_headers)
    assert_error(resp, 400, "validation_error", "project_id")


@pytest.mark.parametrize("task_type", ["generate_music", "GENERATE_VIDEO", "", 1, None])
def test_unknown_task_type_is_400(client: TestClient, project: Project, task_type: Any) -> None:
    resp = _post(client, project, submission(project.project_id, task_type=task_type))
    assert_error(resp, 400, "validation_error", "task_type")


@pytest.mark.parametrize("task_data", [[], "x", None, 3])
def test_task_data_must_be_an_object(client: TestClient, project: Project, task_data: Any) -> None:
    resp = _post(client, project, submission(project.project_id, task_data=task_data))
    assert_error(resp, 400, "validation_error", "task_data")


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("task_data", "field", "words"),
    [
        ({"storyboard_images": ["x" * 4001]}, "task_data.storyboard_images[0]", "4000"),
        ({"scene_description": "x" * 4001}, "task_data.scene_description", "4000"),
        ({"x" * 4001: 1}, "task_data", "4000"),
        ({"audio_cues": ["a"] * 65}, "task_data.audio_cues", "64 items"),
        ({"a": [[1, {"b": "\x00"}]]}, "task_data.a[0][1].b", "NUL"),
        ({"odd key": "\ud800"}, 'task_data["odd key"]', "Unicode"),
        ({"a": {"b\x00": 1}}, "task_data.a", "NUL characters are not allowed in a key"),
        (_nested(9), "task_data.n.n.n.n.n.n.n.n", "8 levels"),
        ({f"k{i}": "x" * 3000 for i in range(23)}, "task_data", "65536 bytes"),
    ],
)
def test_task_data_bounds(
    client: TestClient, project: Project, task_data: dict[str, Any], field: str, words: str
) -> None:
    resp = _post(client, project, submission(project.project_id, task_data=task_data))
    err = assert_error(resp, 400, "validation_error", field)
    assert words in err["error"]["message"]


def test_task_data_within_bounds_is_accepted(client: TestClient, project: Project) -> None:
    task_data = {
        "storyboard_images": ["https://example.com/" + "x" * 2000] * 16,
        "scene_description": "x" * 2000,
        "character_positions": ["p" * 100] * 16,
    }
    resp = _post(client, project, submission(project.project_id, task_data=task_data))
    assert resp.status_code == 202, resp.text


def test_non_finite_numbers_are_400(client: TestClient, project: Project) -> None:
    # Python's json reads NaN; PostgreSQL's jsonb would refuse it with a 500.
    resp = _post(client, project, submission(project.project_id, task_data={"fps": float("nan")}))
    assert_error(resp, 400, "validation_error", "task_data.fps")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "/relative/path",
        "javascript:alert(1)",
        "https://example.com/" + "a" * 2040,
        " https://example.com/hook",
        5,
    ],
)
def test_bad_callback_url_is_400(client: TestClient, project: Project, url: Any) -> None:
    resp = _post(client, project, submission(project.project_id, callback_url=url))
    err = assert_error(resp, 400, "validation_error", "callback_url")
    assert err["error"]["message"].startswith("callback_url: ")
    assert "Value error" not in err["error"]["message"]


def test_callback_url_may_be_null_or_http(client: TestClient, project: Project) -> None:
    for url in (None, "http://platform.internal:3010/api/webhooks/task-complete"):
        resp = _post(client, project, submission(project.project_id, callback_url=url))
        assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("key", ["scene_id", "character_id", "dialogue_id", "user_id", "agent_id"])
@pytest.mark.parametrize("value", ["../etc", "a/b", "", 7, None, "x" * 65])
def test_metadata_ids_must_be_ids(
    client: TestClient, project: Project, key: str, value: Any
) -> None:
    resp = _post(client, project, submission(project.project_id, metadata={key: value}))
    assert_error(resp, 400, "validation_error", f"metadata.{key}")


def test_metadata_must_be_an_object(client: TestClient, project: Project) -> None:
    resp = _post(client, project, submission(project.project_id, metadata=["scene_005"]))
    assert_error(resp, 400, "validation_error", "metadata")


def test_metadata_size_limit(client: TestClient, project: Project) -> None:
    # The test settings allow 2,048 bytes of metadata.
    resp = _post(client, project, submission(project.project_id, metadata={"notes": "x" * 2100}))
    err = assert_error(resp, 400, "validation_error", "metadata")
    assert "2048 bytes" in err["error"]["message"]
    resp = _post(client, project, submission(project.project_id, metadata={"notes": "x" * 1900}))
    assert resp.status_code == 202


def test_several_errors_name_the_first(client: TestClient, project: Project) -> None:
    body = submission(project.project_id, priority=0, task_type="nope")
    err = assert_error(_post(client, project, body), 400, "validation_error", "task_type")
    assert "(and 1 more error)" in err["error"]["message"]
