"""Scenario 1: SIGKILL of the generation worker mid-run. The run never stays processing: the
dead slot is detected (Celery's record of a lost child at once, else the heartbeat bound), the
run is retried per dagster/max_retries on a live slot, and the task completes exactly once:
one media object, one result, one callback."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from dagster import DagsterEventType

from tests.conftest import AssetServer, RunningStack, poll
from tests.reliability.faults.conftest import (
    MONITOR_POLL_S,
    WORKER_DEAD_AFTER_S,
    assert_delivered_once,
    media_files,
    report,
    run_failed_at,
    runs,
    slot_of,
)

pytestmark = pytest.mark.reliability

# Stalls the first attempt only (the retry runs normally), so the kill lands mid-run.
SLOW_FIRST = {"character_description": "FAULT_SLOW_ONCE detective"}


def _failure_message(stack: RunningStack, run_id: str) -> str:
    records = (
        stack.instance().get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    )
    return " ".join(str(r.event_log_entry.message) for r in records)


def _check_completed_once(
    stack: RunningStack, receiver: AssetServer, task_id: str, path: str, final: dict[str, Any]
) -> str:
    """Check the task completed exactly once after one lost run; the lost run's reason."""
    assert final["status"] == "completed", final
    assert final["attempt"] == 2
    task_runs = runs(stack, task_id)
    assert len(task_runs) == 2
    assert sorted(r.status.value for r in task_runs) == ["FAILURE", "SUCCESS"]
    retry, first = task_runs
    assert retry.tags["dagster/retry_number"] == "1"
    assert retry.tags["dagster/parent_run_id"] == first.run_id
    attempts = final["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert [a["run_id"] for a in attempts] == [first.run_id, retry.run_id]
    assert attempts[0]["error"] and attempts[0]["ended_at"]
    assert attempts[1]["error"] is None
    # One media object under the task's key, one result pointing at it.
    (media,) = media_files(stack, task_id)
    assert final["result"]["media_url"].endswith(media.name)
    assert final["result"]["payload_media_id"] is None
    assert_delivered_once(stack, receiver, path, task_id, "task.completed")
    return _failure_message(stack, first.run_id)


def test_killed_prefork_child_is_detected_at_once_and_retried(
    healthy_fault_stack: RunningStack, receiver: AssetServer
) -> None:
    stack = healthy_fault_stack
    path = "/hooks/child"
    with stack.client() as client:
        task_id = stack.submit_image(
            client, task_data=SLOW_FIRST, callback_url=receiver.url + path
        )["task_id"]
        _, pid = poll(lambda: slot_of(stack, task_id), timeout=120)
        killed = time.time()
        os.kill(pid, signal.SIGKILL)  # only the child running the task; Celery replaces it
        failed_at = poll(lambda: run_failed_at(stack, task_id), timeout=60, interval=0.1)
        final = stack.wait_terminal(client, task_id, timeout=180)
    completed = time.time()
    reason = _check_completed_once(stack, receiver, task_id, path, final)
    detection = failed_at - killed
    # Celery records the lost child's task as failed (or revoked) within a second, and the
    # next monitoring poll fails the run for that, before the heartbeat would go stale.
    assert "worker process running this task died" in reason, reason
    assert detection <= WORKER_DEAD_AFTER_S + 1 + MONITOR_POLL_S + 3, detection
    report("kill prefork child", detection_s=detection, kill_to_completed_s=completed - killed)


def test_killed_worker_process_group_is_detected_by_heartbeat_and_retried(
    healthy_fault_stack: RunningStack, receiver: AssetServer
) -> None:
    stack = healthy_fault_stack
    path = "/hooks/group"
    with stack.client() as client:
        task_id = stack.submit_image(
            client, task_data=SLOW_FIRST, callback_url=receiver.url + path
        )["task_id"]
        poll(lambda: slot_of(stack, task_id), timeout=120)
        killed = time.time()
        stack.stack.kill("worker-gpu_light")  # main process and every child, no goodbye
        stack.stack.respawn("worker-gpu_light")
        failed_at = poll(lambda: run_failed_at(stack, task_id), timeout=60, interval=0.1)
        # While undetected it is still reported as processing, never lost or completed.
        final = stack.wait_terminal(client, task_id, timeout=240)
    completed = time.time()
    reason = _check_completed_once(stack, receiver, task_id, path, final)
    assert "stopped heartbeating" in reason, reason
    detection = failed_at - killed
    # Documented bound: silent for WORKER_DEAD_AFTER plus one heartbeat and one monitor poll.
    assert detection <= WORKER_DEAD_AFTER_S + 1 + MONITOR_POLL_S + 3, detection
    report(
        "kill worker process group",
        detection_s=detection,
        bound_s=WORKER_DEAD_AFTER_S + 1 + MONITOR_POLL_S,
        kill_to_completed_s=completed - killed,
    )
