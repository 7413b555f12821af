"""Scenario 5: GPU out-of-memory in the generation step is retried inside the run, with growing
jittered delays and in low-memory mode; permanent out-of-memory fails the task, no loop."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from dagster import DagsterEventType

from tests.conftest import RunningStack
from tests.reliability.faults.conftest import (
    OOM_MAX_RETRIES,
    OOM_RETRY_BASE_S,
    report,
    runs,
)

pytestmark = pytest.mark.reliability


def _events(stack: RunningStack, run_id: str, etype: DagsterEventType) -> list[Any]:
    records = stack.instance().get_records_for_run(run_id, of_type=etype).records
    return [r.event_log_entry for r in records]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_out_of_memory_twice_then_succeeds_in_low_memory_mode(
    healthy_fault_stack: RunningStack,
) -> None:
    stack = healthy_fault_stack
    with stack.client() as client:
        task_id = stack.submit_image(
            client, task_data={"character_description": "FAULT_OOM_TWICE detective"}
        )["task_id"]
        done = stack.wait_terminal(client, task_id, timeout=180)

    assert done["status"] == "completed", done
    assert done["error"] is None
    assert done["attempt"] == 3
    attempts = done["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["low_memory"] for a in attempts] == [False, True, True]
    assert all(a["error"].startswith("out_of_memory: CUDA out of memory") for a in attempts[:2])
    assert attempts[2]["error"] is None and attempts[2]["ended_at"] is not None
    # Op retries: one run, three step attempts in it.
    (run,) = runs(stack, task_id)
    assert {a["run_id"] for a in attempts} == {run.run_id}
    assert run.status.value == "SUCCESS"

    # Dagster shows the retries as step attempts, each waiting longer than the one before.
    retries = _events(stack, run.run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    waits = [e.dagster_event.event_specific_data.seconds_to_wait for e in retries]
    assert len(waits) == OOM_MAX_RETRIES
    assert OOM_RETRY_BASE_S * 0.75 <= waits[0] <= OOM_RETRY_BASE_S * 1.25, waits
    assert OOM_RETRY_BASE_S * 1.5 <= waits[1] <= OOM_RETRY_BASE_S * 2.5, waits
    assert waits[1] > waits[0]
    assert len(_events(stack, run.run_id, DagsterEventType.STEP_START)) == 1
    assert len(_events(stack, run.run_id, DagsterEventType.STEP_RESTARTED)) == 2

    # The take records that it came out of low-memory mode, and what that mode applied.
    (mat,) = _events(stack, run.run_id, DagsterEventType.ASSET_MATERIALIZATION)
    meta = mat.dagster_event.event_specific_data.materialization.metadata
    assert meta["attempt"].value == 3
    assert meta["low_memory"].value is True
    assert "vae_tiling" in meta["memory_savings"].value

    gaps = [_ts(attempts[i + 1]["started_at"]) - _ts(attempts[i]["ended_at"]) for i in range(2)]
    report("oom twice", retry_wait_1=waits[0], retry_wait_2=waits[1], gap_1=gaps[0], gap_2=gaps[1])


def test_permanent_out_of_memory_fails_after_the_configured_attempts(
    healthy_fault_stack: RunningStack,
) -> None:
    stack = healthy_fault_stack
    with stack.client() as client:
        task_id = stack.submit_image(
            client, task_data={"character_description": "FAULT_OOM_ALWAYS detective"}
        )["task_id"]
        failed = stack.wait_terminal(client, task_id, timeout=180)

    assert failed["status"] == "failed", failed
    assert failed["error"].startswith("out of memory:"), failed["error"]
    assert f"on {OOM_MAX_RETRIES + 1} attempt(s)" in failed["error"]
    assert failed["attempt"] == OOM_MAX_RETRIES + 1
    assert len(failed["attempts"]) == OOM_MAX_RETRIES + 1
    assert all(a["error"].startswith("out_of_memory") for a in failed["attempts"])
    # No loop: the failure is final, the run is not retried as a whole.
    (run,) = runs(stack, task_id)
    assert run.status.value == "FAILURE"
    assert run.tags.get("dagster/will_retry") == "false"
