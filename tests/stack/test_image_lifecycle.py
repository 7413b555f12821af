"""generate_image end to end over HTTP on the real stack: runs, progress, media, lineage."""

from __future__ import annotations

import io
import uuid

import httpx
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, RunsFilter
from PIL import Image

from tests.conftest import KEY_B, PROJECT_A, RunningStack, poll


def test_image_task_completes_with_real_jpeg_and_monotonic_progress(
    running_stack: RunningStack,
) -> None:
    with running_stack.client() as client:
        accepted = running_stack.submit_image(client, task_data={"resolution": "1024x1024"})
        assert accepted["status"] == "queued"
        assert accepted["project_id"] == PROJECT_A
        assert accepted["queue_position"] >= 1
        assert accepted["estimated_duration"] > 0
        task_id = accepted["task_id"]

        seen: list[tuple[str, float, str]] = []

        def finished() -> dict | None:
            doc = client.get(f"/api/v1/tasks/{task_id}/status").json()
            seen.append((doc["status"], doc["progress"], doc["current_step"]))
            return doc if doc["status"] in ("completed", "failed", "cancelled") else None

        doc = poll(finished, timeout=180, interval=0.05)

    assert doc["status"] == "completed", doc
    assert doc["progress"] == 1.0 and doc["current_step"] == "upload_complete"
    assert doc["started_at"] and doc["completed_at"] and doc["error"] is None
    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress), "progress went backwards"
    steps = {s for _, _, s in seen}
    assert "waiting_in_queue" in steps or seen[0][0] == "processing"
    assert steps & {"loading_model", "generating_image", "uploading", "starting"}

    meta = doc["result"]["metadata"]
    assert meta["resolution"] == "1024x1024" and meta["format"] == "jpeg"
    assert isinstance(meta["seed"], int) and meta["model"]
    media = httpx.get(doc["result"]["media_url"], timeout=10)
    assert media.status_code == 200 and media.headers["content-type"] == "image/jpeg"
    assert len(media.content) == meta["file_size"]
    assert Image.open(io.BytesIO(media.content)).size == (1024, 1024)
    assert f"/media/{PROJECT_A}/images/{task_id}.jpg" in doc["result"]["media_url"]

    # Exactly one Dagster run, partitioned per project/character, with the take's provenance.
    instance = running_stack.instance()
    runs = instance.get_runs(RunsFilter(tags={"moviegen/task_id": task_id}))
    assert len(runs) == 1
    assert runs[0].tags["dagster/partition"] == f"{PROJECT_A}/detective_main"
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey("character_image"),
            asset_partitions=[f"{PROJECT_A}/detective_main"],
        ),
        limit=50,
    ).records
    takes = [
        r.asset_materialization
        for r in records
        if r.asset_materialization and r.asset_materialization.metadata["task_id"].value == task_id
    ]
    assert len(takes) == 1
    md = takes[0].metadata
    assert md["seed"].value == meta["seed"]
    assert "Detective in 1920s noir style" in md["prompt"].value
    assert md["media_url"].value == doc["result"]["media_url"]
    assert md["generation_seconds"].value > 0


def test_model_loads_once_per_worker_process(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        ids = [running_stack.submit_image(client)["task_id"] for _ in range(6)]
        docs = [running_stack.wait_terminal(client, t) for t in ids]
    assert all(d["status"] == "completed" for d in docs)
    instance = running_stack.instance()
    loads: dict[str, set[int]] = {}
    for task_id in ids:
        run = instance.get_runs(RunsFilter(tags={"moviegen/task_id": task_id}))[0]
        mats = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        ).records
        md = mats[0].asset_materialization.metadata  # type: ignore[union-attr]
        loads.setdefault(md["worker"].value, set()).add(md["pipeline_loads"].value)
    # Every worker slot loaded the pipeline once, however many tasks it ran.
    assert loads and all(values == {1} for values in loads.values()), loads


def test_other_project_cannot_see_task_or_list_it(running_stack: RunningStack) -> None:
    with running_stack.client() as client_a, running_stack.client(KEY_B) as client_b:
        task_id = running_stack.submit_image(client_a)["task_id"]
        foreign = client_b.get(f"/api/v1/tasks/{task_id}/status")
        unknown = client_b.get(f"/api/v1/tasks/{uuid.uuid4()}/status")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.content == unknown.content
        assert client_b.delete(f"/api/v1/tasks/{task_id}/cancel").content == unknown.content
        assert client_b.get(f"/api/v1/projects/{PROJECT_A}/tasks").status_code == 403
        listing = client_b.get("/api/v1/projects/project_b/tasks").json()
        assert all(t["task_id"] != task_id for t in listing["tasks"])
        running_stack.wait_terminal(client_a, task_id)


def test_health_and_workers_status(running_stack: RunningStack) -> None:
    health = httpx.get(f"{running_stack.api_url}/api/v1/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["components"] == {
        "database": "healthy",
        "broker": "healthy",
        "daemon": "healthy",
        "workers": "healthy",
    }
    with running_stack.client() as client:
        workers = client.get("/api/v1/workers/status").json()
    assert workers["total_workers"] >= 3
    assert {w["worker_type"] for w in workers["workers"]} == {"gpu_heavy", "gpu_light"}
    assert all(w["last_heartbeat"].endswith("Z") for w in workers["workers"])


def test_completed_task_is_listed_newest_first(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        first = running_stack.submit_image(client)["task_id"]
        second = running_stack.submit_image(client)["task_id"]
        running_stack.wait_terminal(client, first)
        running_stack.wait_terminal(client, second)
        page = client.get(
            f"/api/v1/projects/{PROJECT_A}/tasks",
            params={"status": "completed", "task_type": "generate_image", "limit": 100},
        ).json()
    ids = [t["task_id"] for t in page["tasks"]]
    assert ids.index(second) < ids.index(first)
    assert all(
        t["status"] == "completed" and t["task_type"] == "generate_image" for t in page["tasks"]
    )


def test_listing_converges_to_run_status_without_status_reads(
    running_stack: RunningStack,
) -> None:
    """The sync sensor, not the status route, keeps listed statuses in line with Dagster."""
    with running_stack.client() as client:
        task_id = running_stack.submit_image(client)["task_id"]

        def listed_completed() -> bool:
            page = client.get(
                f"/api/v1/projects/{PROJECT_A}/tasks", params={"status": "completed", "limit": 100}
            ).json()
            return any(t["task_id"] == task_id for t in page["tasks"])

        poll(listed_completed, timeout=120, interval=0.5)
