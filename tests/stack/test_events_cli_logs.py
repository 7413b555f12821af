"""Live events, the CLI client, /metrics and JSON logs against the real stack."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import PIL.Image
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moviegen_dagster import cli
from moviegen_dagster.cli_client import EXIT_API, EXIT_OK, parse_sse
from tests.conftest import KEY_A, KEY_B, PROJECT_A, RunningStack

STATUS_ORDER = {"queued": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}
IMAGE_DATA = {
    "character_description": "Detective in 1920s noir style",
    "resolution": "256x256",
}


def _stream(stack: RunningStack, task_id: str, key: str = KEY_A) -> list[Any]:
    """Every event of the task's stream until the server closes it."""
    timeout = httpx.Timeout(10.0, read=60.0)
    with (
        httpx.Client(base_url=stack.api_url, headers={"X-API-Key": key}, timeout=timeout) as c,
        c.stream("GET", f"/api/v1/tasks/{task_id}/events") as resp,
    ):
        assert resp.status_code == 200
        return list(parse_sse(resp.iter_lines()))


def test_event_stream_follows_a_task_to_completion(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(client)["task_id"]
    events = _stream(running_stack, task_id)

    assert [e.event for e in events][-1] == "end"
    statuses = [e.json() for e in events if e.event == "status"]
    assert statuses[-1]["status"] == "completed"
    assert statuses[-1]["result"]["media_url"]
    assert events[-1].json() == {"status": "completed"}
    # Monotonic: status only moves forward, progress never goes back, ids only grow.
    ranks = [STATUS_ORDER[s["status"]] for s in statuses]
    assert ranks == sorted(ranks), [s["status"] for s in statuses]
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress), progress
    ids = [int(e.id) for e in events if e.event == "status"]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    # More than the first and last state: the stream carried the progress in between.
    assert len(statuses) >= 3, statuses
    assert {s["current_step"] for s in statuses} & {"loading_model", "generating_image"}
    # The worker's preview of the image reached the stream, and the preview route serves it.
    previews = [e.json() for e in events if e.event == "preview"]
    assert [(p["kind"], p["width"], p["height"]) for p in previews] == [("image", 256, 256)]
    with running_stack.client() as client:
        latest = client.get(f"/api/v1/tasks/{task_id}/preview")
    assert latest.status_code == 200 and latest.headers["content-type"] == "image/jpeg"
    assert PIL.Image.open(io.BytesIO(latest.content)).size == (256, 256)

    # Another project's key gets the unknown-task 404, before any streaming.
    with httpx.Client(base_url=running_stack.api_url, headers={"X-API-Key": KEY_B}) as other:
        resp = other.get(f"/api/v1/tasks/{task_id}/events")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def _cli(stack: RunningStack, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI in-process against the stack; returns exit code and stdout."""
    capsys.readouterr()
    code = cli.main([*argv, "--api-url", stack.api_url, "--api-key", KEY_A, "--json"])
    captured = capsys.readouterr()
    return code, captured.out if code == EXIT_OK else captured.out + captured.err


def test_cli_against_the_stack(
    running_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _cli(
        running_stack,
        capsys,
        "submit",
        "--type",
        "generate_image",
        "--project",
        PROJECT_A,
        "--data",
        json.dumps(IMAGE_DATA),
        "--metadata",
        '{"character_id": "cli_detective"}',
        "--priority",
        "2",
        "--wait",
        "--timeout",
        "180",
    )
    assert code == EXIT_OK, out
    done = json.loads(out)  # --json: stdout holds exactly the final status document
    assert done["status"] == "completed" and done["progress"] == 1.0
    task_id = done["task_id"]

    code, out = _cli(running_stack, capsys, "status", task_id)
    assert code == EXIT_OK and json.loads(out)["status"] == "completed"
    code, out = _cli(running_stack, capsys, "list", "--project", PROJECT_A, "--limit", "100")
    assert code == EXIT_OK
    assert task_id in {t["task_id"] for t in json.loads(out)["tasks"]}
    code, out = _cli(running_stack, capsys, "workers")
    assert code == EXIT_OK and json.loads(out)["total_workers"] >= 1

    # API errors: exit 3 with the API's message.
    code, out = _cli(running_stack, capsys, "cancel", task_id)
    assert code == EXIT_API and "409" in out and "completed" in out
    code, out = _cli(running_stack, capsys, "status", str(uuid.uuid4()))
    assert code == EXIT_API and "task not found" in out

    # Cancel a fresh task (queued or already processing: both end cancelled).
    code, out = _cli(
        running_stack,
        capsys,
        "submit",
        "--type",
        "generate_image",
        "--project",
        PROJECT_A,
        "--data",
        json.dumps({**IMAGE_DATA, "resolution": "1024x1024"}),
    )
    assert code == EXIT_OK
    fresh = json.loads(out)["task_id"]
    code, out = _cli(running_stack, capsys, "cancel", fresh)
    assert code == EXIT_OK and json.loads(out)["status"] == "cancelled"
    code, out = _cli(running_stack, capsys, "status", fresh, "--wait", "--timeout", "60")
    assert code == 1 and json.loads(out.splitlines()[0])["status"] == "cancelled"


def test_metrics_on_the_stack(running_stack: RunningStack) -> None:
    resp = httpx.get(f"{running_stack.api_url}/metrics", timeout=10)
    assert resp.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    workers = {
        (s.labels["worker_type"], s.labels["state"]): s.value
        for s in families["moviegen_workers"].samples
    }
    assert workers.get(("gpu_light", "idle"), 0) + workers.get(("gpu_light", "busy"), 0) == 2
    assert "moviegen_task_duration_seconds" in families


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert lines, f"{path.name} is empty"
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{n} is not JSON: {line[:200]!r}")
    return records


def test_logs_are_json_with_task_and_run_ids(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(client)["task_id"]
        _stream(running_stack, task_id)  # follow it to the end (and log the stream)
        doc = running_stack.wait_terminal(client, task_id)
    assert doc["status"] == "completed"
    with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT run_id FROM moviegen.tasks WHERE task_id = %s", (uuid.UUID(task_id),)
        ).fetchone()
    assert row is not None
    run_id = row[0]

    logs = running_stack.stack.logs
    api = _json_lines(logs / "api.log")
    worker = _json_lines(logs / "worker-gpu_light.log")
    for rec in api + worker:
        assert {"time", "level", "logger", "message", "process_name"} <= set(rec), rec
    # Lines about the task carry its id (and the run's where the process knows it).
    about_api = [r for r in api if r.get("task_id") == task_id]
    assert about_api, "no API log line carries the task id"
    assert any(r.get("run_id") == run_id for r in about_api)
    about_worker = [r for r in worker if r.get("task_id") == task_id]
    assert about_worker, "no worker log line carries the task id"
    assert all(r.get("run_id") == run_id for r in about_worker)
    # The op's first line (its attempt) already carries the task: the slot is claimed first.
    attempt_lines = [r for r in worker if f"task {task_id}: attempt 1" in r["message"]]
    assert attempt_lines, "the attempt line is not in the worker log"
    assert all(r.get("task_id") == task_id for r in attempt_lines), attempt_lines
    # MovieGen's own records that name the task carry it as a field too.
    mentioning = [
        r
        for r in api + worker
        if task_id in r["message"]
        and r["logger"].startswith("moviegen.")
        and "stdio" not in r["logger"]
    ]
    assert all(r.get("task_id") == task_id for r in mentioning), mentioning
