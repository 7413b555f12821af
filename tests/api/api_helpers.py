"""Helpers shared by the API tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from moviegen_dagster import keys

# Small limits in the test settings keep the limit tests small.
MAX_BODY_BYTES = 256 * 1024
MAX_METADATA_BYTES = 2_048
ADMIN_KEY = "mg_test_admin_" + secrets.token_hex(8)
# A project key seeded from MOVIEGEN_API_KEYS at start-up.
SEEDED_PROJECT = "seeded_project"
SEEDED_KEY = "mg_test_seeded_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Project:
    """A fresh project with its own key (so tests do not see each other's tasks)."""

    project_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        """Request headers carrying this project's key."""
        return {"X-API-Key": self.key}


def make_project(conn: psycopg.Connection[Any]) -> Project:
    """A new project id and a key covering it."""
    project_id = f"proj_{secrets.token_hex(5)}"
    raw = keys.new_key()
    keys.store_key(conn, raw, f"test:{project_id}", project_id)
    return Project(project_id, raw)


# Minimal valid task_data per task type (the quickstart's examples).
VALID_TASK_DATA: dict[str, dict[str, Any]] = {
    "generate_video": {
        "storyboard_images": ["https://example.com/frame1.jpg"],
        "scene_description": "Detective enters the dark alley",
    },
    "generate_image": {"character_description": "Detective in 1920s noir style"},
    "process_audio": {
        "text": "I have been expecting you, detective.",
        "character_voice_profile": "https://example.com/detective_voice.wav",
    },
}


def submission(project_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid submission (the contract's video example), with overrides."""
    task_type = overrides.get("task_type", "generate_video")
    body: dict[str, Any] = {
        "project_id": project_id,
        "task_type": "generate_video",
        "task_data": dict(VALID_TASK_DATA.get(task_type, VALID_TASK_DATA["generate_video"])),
        "priority": 1,
        "callback_url": "https://main-app.com/api/webhooks/task-complete",
        "metadata": {"user_id": "user123", "agent_id": "video_agent", "scene_id": "scene_005"},
    }
    body.update(overrides)
    return body


def submit(client: TestClient, project: Project, **overrides: Any) -> dict[str, Any]:
    """Submit a valid task and return the 202 body."""
    resp = client.post(
        "/api/v1/tasks/submit",
        json=submission(project.project_id, **overrides),
        headers=project.headers,
    )
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


def set_task(conn: psycopg.Connection[Any], task_id: str, **columns: Any) -> None:
    """Force stored columns of a task (jsonb values wrapped)."""
    sets = ", ".join(f"{name} = %s" for name in columns)
    values = [Jsonb(v) if isinstance(v, dict) else v for v in columns.values()]
    conn.execute(
        f"UPDATE moviegen.tasks SET {sets} WHERE task_id = %s", [*values, uuid.UUID(task_id)]
    )


def assert_error(resp: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The response is an error in the common shape with this status, code and field."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code, body
    assert body["error"]["field"] == field, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if field is not None and field not in ("X-API-Key", "Content-Type"):
        assert field in body["error"]["message"], body
    return body
