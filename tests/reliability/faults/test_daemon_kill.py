"""Scenario 2: SIGKILL of dagster-daemon with ten tasks waiting in the queue. Nothing is
dequeued while it is down; after it is respawned every task runs exactly once."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.conftest import AssetServer, RunningStack
from tests.reliability.faults.conftest import (
    assert_delivered_once,
    media_files,
    report,
    runs,
    status,
)

pytestmark = pytest.mark.reliability

TASKS = 10


def test_killed_daemon_runs_every_queued_task_once_after_respawn(
    healthy_fault_stack: RunningStack, receiver: AssetServer
) -> None:
    stack = healthy_fault_stack
    stack.stack.kill("dagster-daemon")
    try:
        with stack.client() as client:
            ids = [
                stack.submit_image(client, callback_url=f"{receiver.url}/hooks/q{i}")["task_id"]
                for i in range(TASKS)
            ]
            # Without the daemon nothing leaves Dagster's queue (the API launched every run).
            for task_id in ids:
                (run,) = runs(stack, task_id)
                assert run.status.value == "QUEUED"
                assert status(client, task_id)["status"] == "queued"
    finally:
        respawned = time.time()
        stack.stack.respawn("dagster-daemon")
    with stack.client() as client:
        docs = [stack.wait_terminal(client, t, timeout=300) for t in ids]
    drained = time.time()
    assert [d["status"] for d in docs] == ["completed"] * TASKS, docs
    for i, task_id in enumerate(ids):
        (run,) = runs(stack, task_id)  # none twice
        assert run.status.value == "SUCCESS"
        assert len(media_files(stack, task_id)) == 1
        assert docs[i]["attempt"] == 1 and len(docs[i]["attempts"]) == 1
        assert_delivered_once(stack, receiver, f"/hooks/q{i}", task_id, "task.completed")
    first_start = min(datetime.fromisoformat(d["started_at"]).timestamp() for d in docs)
    report(
        "kill daemon with queue",
        tasks=TASKS,
        respawn_to_all_completed_s=drained - respawned,
        respawn_to_first_start_s=first_start - respawned,
    )
