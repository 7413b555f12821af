"""Cancel, retry, priority and restarts on the real stack (2 gpu_light slots)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from dagster import DagsterEventType, RunsFilter

from tests.conftest import PROJECT_A, RunningStack, poll

# ~0.1-0.3 s per step at 1024x1024 on this machine: long enough to act on while it runs.
SLOW = {"resolution": "1024x1024", "steps": 60}


def _status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/tasks/{task_id}/status").json())


def _runs(stack: RunningStack, task_id: str) -> list[Any]:
    return list(stack.instance().get_runs(RunsFilter(tags={"moviegen/task_id": task_id})))


def _wait_processing(client: httpx.Client, task_id: str) -> dict[str, Any]:
    return poll(
        lambda: (d := _status(client, task_id))["current_step"] == "generating_image" and d,
        timeout=120,
    )


def test_cancel_while_processing_ends_cancelled_and_worker_survives(
    running_stack: RunningStack,
) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(client, task_data=SLOW)["task_id"]
        _wait_processing(client, task_id)
        with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
            worker = conn.execute(
                "SELECT worker_id, pid FROM moviegen.workers WHERE current_task_id = %s",
                (uuid.UUID(task_id),),
            ).fetchone()
        assert worker is not None
        resp = client.delete(f"/api/v1/tasks/{task_id}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "cancelled"
        # Cancelling a cancelled task again is harmless.
        again = client.delete(f"/api/v1/tasks/{task_id}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        poll(lambda: _runs(running_stack, task_id)[0].status.value == "CANCELED", timeout=60)

        def same_process_idle() -> bool:
            with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
                row = conn.execute(
                    "SELECT pid, status, last_heartbeat > now() - interval '5 seconds' "
                    "FROM moviegen.workers WHERE worker_id = %s",
                    (worker[0],),
                ).fetchone()
            return row is not None and row[0] == worker[1] and row[1] == "idle" and row[2]

        poll(same_process_idle, timeout=30)
        final = _status(client, task_id)
        assert final["status"] == "cancelled" and final["result"] is None


def test_cancel_while_queued_never_runs(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        blockers = [running_stack.submit_image(client, task_data=SLOW)["task_id"] for _ in range(2)]
        for b in blockers:
            _wait_processing(client, b)
        queued = running_stack.submit_image(client)
        assert queued["status"] == "queued"
        assert _status(client, queued["task_id"])["status"] == "queued"
        resp = client.delete(f"/api/v1/tasks/{queued['task_id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        for b in blockers:
            assert client.delete(f"/api/v1/tasks/{b}/cancel").json()["status"] == "cancelled"
        runs = poll(lambda: _runs(running_stack, queued["task_id"]), timeout=30)
        poll(lambda: _runs(running_stack, queued["task_id"])[0].status.value == "CANCELED")
        assert len(runs) == 1
        doc = _status(client, queued["task_id"])
        assert doc["status"] == "cancelled" and doc["started_at"] is None
        # A cancelled task cannot be retried; a completed one cannot be cancelled.
        assert client.post(f"/api/v1/tasks/{queued['task_id']}/retry").status_code == 409


def test_failed_task_retries_under_same_id(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(
            client, task_data={"character_description": "FAULT_ONCE detective"}
        )["task_id"]
        failed = running_stack.wait_terminal(client, task_id)
        assert failed["status"] == "failed"
        assert "injected fault" in str(failed["error"])
        assert failed["completed_at"] is not None
        first_run = _runs(running_stack, task_id)[0]

        resp = client.post(f"/api/v1/tasks/{task_id}/retry")
        assert resp.status_code == 202, resp.text
        assert resp.json()["task_id"] == task_id
        assert resp.json()["status"] in ("queued", "processing")
        done = running_stack.wait_terminal(client, task_id)
        assert done["status"] == "completed", done
        assert done["error"] is None and done["attempt"] == 2

        runs = _runs(running_stack, task_id)
        assert len(runs) == 2
        assert runs[0].tags["dagster/parent_run_id"] == first_run.run_id
        # Only failed tasks can be retried; completed ones cannot be cancelled.
        assert client.post(f"/api/v1/tasks/{task_id}/retry").status_code == 409
        conflict = client.delete(f"/api/v1/tasks/{task_id}/cancel")
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "conflict"


def test_priority_orders_the_queue_under_saturation(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        blockers = [running_stack.submit_image(client, task_data=SLOW)["task_id"] for _ in range(2)]
        for b in blockers:
            _wait_processing(client, b)
        low = [running_stack.submit_image(client, priority=9)["task_id"] for _ in range(2)]
        high = running_stack.submit_image(client, priority=1)
        assert high["queue_position"] == 1
        assert _status(client, low[1])["status"] == "queued"
        # Free exactly one slot: the most urgent waiting task must take it.
        client.delete(f"/api/v1/tasks/{blockers[0]}/cancel")
        started = poll(
            lambda: [t for t in [high["task_id"], *low] if _status(client, t)["started_at"]],
            timeout=120,
            interval=0.1,
        )
        assert started == [high["task_id"]], "a lower-priority task started first"
        client.delete(f"/api/v1/tasks/{blockers[1]}/cancel")
        docs = [running_stack.wait_terminal(client, t) for t in [high["task_id"], *low]]
    assert all(d["status"] == "completed" for d in docs)
    assert docs[0]["started_at"] <= min(d["started_at"] for d in docs[1:])


def test_api_restart_loses_no_task(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    with running_stack.client() as client:
        ids = [running_stack.submit_image(client)["task_id"] for _ in range(3)]
    stack.kill("api")
    try:
        with running_stack.client() as client, pytest.raises(httpx.ConnectError):
            client.get("/api/v1/health")
    finally:
        stack.respawn("api")
    poll(lambda: _api_up(running_stack), timeout=60)
    with running_stack.client() as client:
        for task_id in ids:
            assert running_stack.wait_terminal(client, task_id)["status"] == "completed"
            assert len(_runs(running_stack, task_id)) == 1


def _api_up(stack: RunningStack) -> bool:
    try:
        return httpx.get(f"{stack.api_url}/api/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_task_committed_without_a_run_is_launched_by_the_reconciler(
    running_stack: RunningStack,
) -> None:
    """The API died between committing the task and launching its run."""
    from moviegen_dagster import store

    with psycopg.connect(
        running_stack.env["DATABASE_URL"], row_factory=psycopg.rows.dict_row
    ) as conn:
        row = store.insert_task(
            conn,
            store.NewTask(
                project_id=PROJECT_A,
                task_type="generate_image",
                priority=5,
                task_data={"character_description": "orphaned task", "resolution": "256x256"},
                metadata={"character_id": "orphan"},
                callback_url=None,
                partition_key=f"{PROJECT_A}/orphan",
            ),
            estimated=10,
        )
    task_id = str(row["task_id"])
    with running_stack.client() as client:
        assert running_stack.wait_terminal(client, task_id)["status"] == "completed"
    runs = _runs(running_stack, task_id)
    assert len(runs) == 1 and runs[0].tags["dagster/partition"] == f"{PROJECT_A}/orphan"


def test_killed_worker_never_leaves_its_task_processing(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    with running_stack.client() as client:
        task_id = running_stack.submit_image(client, task_data=SLOW)["task_id"]
        _wait_processing(client, task_id)
        stack.kill("worker-gpu_light")
        stack.respawn("worker-gpu_light")
        final = running_stack.wait_terminal(client, task_id, timeout=240)
    # The dead worker's run is failed by the heartbeat check and retried on the new worker.
    assert final["status"] == "completed", final
    runs = _runs(running_stack, task_id)
    assert len(runs) == 2
    assert {r.status.value for r in runs} == {"FAILURE", "SUCCESS"}
    assert final["attempt"] == 2


def test_retry_after_a_failed_upload_delivers_without_regenerating(
    running_stack: RunningStack,
) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(
            client, task_data={"character_description": "FAULT_UPLOAD_ONCE detective"}
        )["task_id"]
        failed = running_stack.wait_terminal(client, task_id)
        assert failed["status"] == "failed" and "upload" in failed["error"]
        assert client.post(f"/api/v1/tasks/{task_id}/retry").status_code == 202
        done = running_stack.wait_terminal(client, task_id)
    assert done["status"] == "completed", done
    instance = running_stack.instance()
    retry_run = _runs(running_stack, task_id)[0]
    mats = instance.get_records_for_run(
        retry_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    take = mats[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert take["reused_media"].value is True
    assert take["seed"].value == done["result"]["metadata"]["seed"]
