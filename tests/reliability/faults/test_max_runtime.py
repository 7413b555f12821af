"""Scenario 6: a run over its maximum runtime (dagster/max_runtime, from the task type's setting)
fails with a timeout error, is not retried, and frees its worker slot."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PROJECT_A, AssetServer, RunningStack, poll
from tests.reliability.faults.conftest import (
    AUDIO_MAX_RUNTIME_S,
    MONITOR_POLL_S,
    assert_delivered_once,
    db,
    report,
    runs,
    slot_of,
    status,
)

pytestmark = pytest.mark.reliability


def test_run_over_its_maximum_runtime_fails_with_a_timeout_and_frees_the_slot(
    healthy_fault_stack: RunningStack, receiver: AssetServer
) -> None:
    stack = healthy_fault_stack
    voice = receiver.add("/voice.wav", "audio/wav", b"RIFF")
    with stack.client() as client:
        resp = client.post(
            "/api/v1/tasks/submit",
            json={
                "project_id": PROJECT_A,
                "task_type": "process_audio",
                "task_data": {"text": "FAULT_SLOW a line", "character_voice_profile": voice},
                "metadata": {"dialogue_id": "slow_line"},
                "callback_url": receiver.url + "/hooks/timeout",
            },
        )
        assert resp.status_code == 202, resp.text
        task_id = resp.json()["task_id"]
        slot = poll(lambda: slot_of(stack, task_id), timeout=120)
        failed = stack.wait_terminal(client, task_id, timeout=120)

        assert failed["status"] == "failed", failed
        assert f"exceeded its maximum runtime of {AUDIO_MAX_RUNTIME_S} s" in failed["error"]

        # Run monitoring reports the run CANCELING, terminates it and marks it FAILURE, while
        # the interrupted worker records its own end (CANCELED): the run ends in whichever
        # lands last. The task is failed either way, as soon as the timeout is known.
        def final_run() -> Any:
            found = runs(stack, task_id)
            assert len(found) == 1, found  # a timeout is final: no run retry
            return found[0] if found[0].status.value in ("FAILURE", "CANCELED") else None

        run = poll(final_run, timeout=30)
        assert run.tags["dagster/max_runtime"] == str(AUDIO_MAX_RUNTIME_S)
        assert failed["attempts"][0]["ended_at"] is not None
        record = stack.instance().get_run_record_by_id(run.run_id)
        assert record is not None and record.start_time and record.end_time
        # Stopped after the limit, within a monitoring poll (plus the daemon's own lag).
        overrun = record.end_time - record.start_time - AUDIO_MAX_RUNTIME_S
        assert 0 <= overrun <= MONITOR_POLL_S + 5, overrun

        # The same worker process is idle again and takes the next task.
        def idle_again() -> bool:
            with db(stack) as conn:
                row = conn.execute(
                    "SELECT pid, status FROM moviegen.workers WHERE worker_id = %s", (slot[0],)
                ).fetchone()
            return row is not None and row[0] == slot[1] and row[1] == "idle"

        poll(idle_again, timeout=60)
        # Stays failed: the worker's own end of the run never turns it into a cancellation.
        assert status(client, task_id)["status"] == "failed"
        nxt = stack.submit_image(client)["task_id"]
        assert stack.wait_terminal(client, nxt, timeout=120)["status"] == "completed"
    assert_delivered_once(stack, receiver, "/hooks/timeout", task_id, "task.failed")
    report(
        "max runtime",
        max_runtime=AUDIO_MAX_RUNTIME_S,
        detection_after_limit=overrun,
        bound=MONITOR_POLL_S,
    )
