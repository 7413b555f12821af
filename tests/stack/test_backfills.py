"""Per-project backfills on the real stack: plan, launch through Dagster, new takes in the API."""

from __future__ import annotations

import uuid
from typing import Any

from dagster import RunsFilter

from tests.conftest import KEY_B, PROJECT_B, AssetServer, RunningStack, jpeg, poll

BACKFILLS = f"/api/v1/projects/{PROJECT_B}/backfills"


def test_backfill_redoes_failed_and_stale_partitions_at_low_priority(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    tag = uuid.uuid4().hex[:8]
    broken_subject, stale_subject = f"bf_failed_{tag}", f"bf_stale_{tag}"
    late = asset_server.url + f"/{tag}/late_style.jpg"  # not served yet: the first take fails
    style = asset_server.add(f"/{tag}/style.jpg", "image/jpeg", jpeg((40, 40, 40), (96, 64)))
    with running_stack.client(KEY_B) as client:
        broken = running_stack.submit_image(
            client,
            project=PROJECT_B,
            task_data={"style_guide": late},
            metadata={"character_id": broken_subject},
        )["task_id"]
        good = running_stack.submit_image(
            client,
            project=PROJECT_B,
            task_data={"style_guide": style},
            metadata={"character_id": stale_subject},
        )["task_id"]
        assert running_stack.wait_terminal(client, broken)["status"] == "failed"
        assert running_stack.wait_terminal(client, good)["status"] == "completed"

        # The missing input appears, and the style guide behind the other URL is redrawn.
        asset_server.add(f"/{tag}/late_style.jpg", "image/jpeg", jpeg((90, 10, 10), (96, 64)))
        asset_server.add(f"/{tag}/style.jpg", "image/jpeg", jpeg((10, 90, 10), (96, 64)))
        selection = {
            "task_types": ["generate_image"],
            "scenes": [broken_subject, stale_subject],
            "reasons": ["failed", "stale"],
        }
        dry = client.post(BACKFILLS, json={**selection, "dry_run": True})
        assert dry.status_code == 200, dry.text
        plan = {i["subject"]: i for i in dry.json()["items"]}
        assert plan[broken_subject]["reasons"] == ["failed"]
        assert plan[broken_subject]["parent_task_id"] == broken
        assert plan[stale_subject]["reasons"] == ["stale"]
        assert plan[stale_subject]["details"] == [f"style_guide: content changed ({style})"]
        listed = client.get(f"/api/v1/projects/{PROJECT_B}/tasks", params={"limit": 100}).json()
        assert not [t for t in listed["tasks"] if t["parent_task_id"] in (broken, good)]

        resp = client.post(BACKFILLS, json=selection)
        assert resp.status_code == 202, resp.text
        backfill = resp.json()
        assert len(backfill["dagster_backfill_ids"]) == 1  # one asset: one Dagster backfill
        url = f"{BACKFILLS}/{backfill['backfill_id']}"

        def finished() -> dict[str, Any] | None:
            doc = client.get(url).json()
            return doc if doc["progress"]["state"] == "completed" else None

        doc = poll(finished, timeout=240, interval=1.0)
        assert doc["progress"]["completed"] == 2 and doc["progress"]["created"] == 2
        parents = {t["parent_task_id"]: t for t in doc["tasks"]}
        assert set(parents) == {broken, good}
        for parent_id, child in parents.items():
            status = client.get(f"/api/v1/tasks/{child['task_id']}/status").json()
            assert status["status"] == "completed" and status["parent_task_id"] == parent_id

        # The backfill's runs queued below every interactive task, on the right queue.
        instance = running_stack.instance()
        dagster_id = backfill["dagster_backfill_ids"][0]
        runs = list(instance.get_runs(RunsFilter(tags={"dagster/backfill": dagster_id})))
        assert len(runs) == 2
        for run in runs:
            assert run.tags["dagster/priority"] == "-1"
            assert run.tags["moviegen/backfill_id"] == backfill["backfill_id"]
            assert run.tags["dagster-celery/queue"] == "gpu_light"
            assert run.tags["moviegen/task_id"] in {c["task_id"] for c in doc["tasks"]}

        # Redone: nothing is failed or stale any more.
        again = client.post(BACKFILLS, json={**selection, "dry_run": True}).json()
        assert again["items"] == []
        # Project A's key sees none of it.
        with running_stack.client() as other:
            assert other.get(url).status_code == 403
