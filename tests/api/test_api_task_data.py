"""Per-type task_data validation at submit time: 400 naming the field, defaults stored."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import VALID_TASK_DATA, Project, assert_error, submission
from fastapi.testclient import TestClient


def _post(client: TestClient, project: Project, task_type: str, data: dict[str, Any]) -> Any:
    body = submission(project.project_id, task_type=task_type, task_data=data, metadata={})
    return client.post("/api/v1/tasks/submit", json=body, headers=project.headers)


@pytest.mark.parametrize(
    ("task_type", "change", "field"),
    [
        ("generate_video", {"storyboard_images": []}, "task_data.storyboard_images"),
        ("generate_video", {"storyboard_images": ["ftp://x/y.jpg"]}, "task_data.storyboard_images"),
        (
            "generate_video",
            {"storyboard_images": ["https://x/1.jpg"] * 17},
            "task_data.storyboard_images",
        ),
        ("generate_video", {"scene_description": ""}, "task_data.scene_description"),
        ("generate_video", {"duration": 120}, "task_data.duration"),
        ("generate_video", {"fps": 240}, "task_data.fps"),
        ("generate_video", {"resolution": "3840x2160"}, "task_data.resolution"),
        ("generate_video", {"resolution": "big"}, "task_data.resolution"),
        ("generate_video", {"audio_cues": "rain"}, "task_data.audio_cues"),
        ("generate_video", {"camera": "wide"}, "task_data.camera"),
        ("generate_image", {"character_description": 5}, "task_data.character_description"),
        (
            "generate_image",
            {"reference_images": ["https://x/1.jpg"] * 9},
            "task_data.reference_images",
        ),
        ("generate_image", {"style_guide": "file:///etc/passwd"}, "task_data.style_guide"),
        ("generate_image", {"resolution": "1000x1000"}, "task_data.resolution"),
        ("generate_image", {"seed": -1}, "task_data.seed"),
        ("generate_image", {"steps": 0}, "task_data.steps"),
        ("process_audio", {"text": "x" * 2001}, "task_data.text"),
        ("process_audio", {"pace": "warp"}, "task_data.pace"),
        ("process_audio", {"sample_rate": 8000}, "task_data.sample_rate"),
        ("process_audio", {"character_voice_profile": None}, "task_data.character_voice_profile"),
    ],
)
def test_invalid_task_data_is_400_naming_the_field(
    client: TestClient, project: Project, task_type: str, change: dict[str, Any], field: str
) -> None:
    data = {**VALID_TASK_DATA[task_type], **change}
    resp = _post(client, project, task_type, data)
    body = assert_error(resp, 400, "validation_error", resp.json()["error"]["field"])
    assert body["error"]["field"].startswith(field), body
    assert body["error"]["message"].startswith(body["error"]["field"])


@pytest.mark.parametrize("task_type", sorted(VALID_TASK_DATA))
def test_missing_required_field_is_named(
    client: TestClient, project: Project, task_type: str
) -> None:
    data = dict(VALID_TASK_DATA[task_type])
    required = next(iter(data))
    del data[required]
    body = assert_error(
        _post(client, project, task_type, data), 400, "validation_error", f"task_data.{required}"
    )
    assert "field required" in body["error"]["message"]


def test_list_item_path_is_named(client: TestClient, project: Project) -> None:
    data = {**VALID_TASK_DATA["generate_video"], "storyboard_images": ["https://x/1.jpg", "nope"]}
    resp = _post(client, project, "generate_video", data)
    assert_error(resp, 400, "validation_error", "task_data.storyboard_images[1]")
