"""Scenario 4: PostgreSQL and Redis restart under load. While PostgreSQL is down the API answers
503 in the error shape within seconds; every process recovers by itself; no accepted task is
lost and tasks in flight complete. Redis: accepted tasks still run once it is back."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from moviegen_dagster import tags
from tests.conftest import RunningStack, poll
from tests.reliability.faults.conftest import (
    SLOTS,
    live_slots,
    media_files,
    report,
    runs,
    status,
)

pytestmark = pytest.mark.reliability

# Long enough (several seconds on the tiny models) to stay in flight across the whole outage:
# their steps write events while the database is down. The queued tasks start around the
# database's return, when a step's first reads (its input data versions) may still find it
# unreachable and wait it out (moviegen_dagster/pg_storage.py).
IN_FLIGHT = {"resolution": "640x640", "steps": 100}
DOWN_FOR_S = 4.0
# Longer than dagster-postgres's own connection retries (5 tries, about 6 s in all).
READ_OUTAGE_S = 10.0
# What "answers within a few seconds" means for a request during the outage.
ANSWER_BOUND_S = 8.0


def _completed_once(stack: RunningStack, client: httpx.Client, ids: list[str]) -> None:
    """Every task completed, by exactly one successful run, with one media object."""
    for task_id in ids:
        doc = stack.wait_terminal(client, task_id, timeout=240)
        statuses = [r.status.value for r in runs(stack, task_id)]
        assert doc["status"] == "completed", (doc["error"], doc["attempts"], statuses)
        assert statuses.count("SUCCESS") == 1, statuses
        assert len(media_files(stack, task_id)) == 1


def _first_start_after(client: httpx.Client, ids: list[str], since: float) -> float:
    """Seconds from `since` (epoch) to the first generation attempt any task started after it."""
    starts = [
        datetime.fromisoformat(a["started_at"]).timestamp()
        for t in ids
        for a in status(client, t)["attempts"]
    ]
    return min(t for t in starts if t >= since) - since


def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


def _submit(stack: RunningStack, client: httpx.Client, **task_data: Any) -> httpx.Response:
    return client.post(
        "/api/v1/tasks/submit",
        json={
            "project_id": "project_a",
            "task_type": "generate_image",
            "task_data": {
                "character_description": "Detective in 1920s noir style",
                "resolution": "256x256",
                **task_data,
            },
            "metadata": {"character_id": "detective_main"},
        },
    )


def test_postgres_restart_under_load_loses_nothing(healthy_fault_stack: RunningStack) -> None:
    stack = healthy_fault_stack
    with stack.client() as client:
        in_flight = [stack.submit_image(client, task_data=IN_FLIGHT)["task_id"] for _ in range(2)]
        queued = [stack.submit_image(client)["task_id"] for _ in range(2)]
        poll(lambda: all(status(client, t)["started_at"] for t in in_flight), 120)

        stack.stack.stop_postgres()
        down_at = time.monotonic()
        try:
            answers = {
                "submit": _timed(lambda: _submit(stack, client)),
                "status": _timed(lambda: client.get(f"/api/v1/tasks/{queued[0]}/status")),
                "health": _timed(lambda: client.get("/api/v1/health")),
            }
            time.sleep(max(0.0, DOWN_FOR_S - (time.monotonic() - down_at)))  # the outage
        finally:
            stack.stack.start_postgres()
        back_at, back_wall = time.monotonic(), time.time()

        for name, (resp, took) in answers.items():
            assert resp.status_code == 503, (name, resp.text)
            assert took < ANSWER_BOUND_S, (name, took)
            assert "Traceback" not in resp.text
        for name in ("submit", "status"):
            error = answers[name][0].json()["error"]
            assert error["code"] == "unavailable" and error["message"], error
        assert answers["health"][0].json()["components"]["database"] == "unhealthy"

        # Recovery: the first submit accepted after PostgreSQL is back.
        def accepted_submit() -> httpx.Response | None:
            resp = _submit(stack, client)
            return resp if resp.status_code == 202 else None

        accepted = poll(accepted_submit, 60)
        first_submit_s = time.monotonic() - back_at
        after = str(accepted.json()["task_id"])
        _completed_once(stack, client, [*in_flight, *queued, after])
        running_again_s = _first_start_after(client, [*in_flight, *queued, after], back_wall)

    # Every process is still the one that was started, and all heal to healthy.
    stack.stack.check_alive()
    poll(lambda: live_slots(stack) >= SLOTS, timeout=60)
    with stack.client() as client:
        poll(lambda: client.get("/api/v1/health").json()["status"] == "healthy", timeout=60)
    report(
        "postgres restart",
        down_s=DOWN_FOR_S,
        submit_503_s=answers["submit"][1],
        db_back_to_first_submit_s=first_submit_s,
        db_back_to_first_attempt_started_s=running_again_s,
    )


def test_dagster_reads_wait_out_a_postgres_restart(healthy_fault_stack: RunningStack) -> None:
    """What a run step does first (read its run, its inputs' latest materializations) waits
    for the database instead of failing the step; the webserver's held connection, cut by the
    restart, is replaced on its first query."""
    from dagster import AssetKey

    stack = healthy_fault_stack
    instance = stack.instance()
    graphql = {"query": "{ runsOrError(limit: 1) { __typename } }"}
    with httpx.Client(base_url=stack.dagster_url, timeout=30) as dagster:
        assert dagster.post("/graphql", json=graphql).status_code == 200  # a held connection

        outcome: dict[str, Any] = {}

        def step_start_reads() -> None:
            started = time.monotonic()
            try:
                instance.get_runs(limit=1)
                instance.get_latest_materialization_event(AssetKey("character_image"))
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc
            outcome["took"] = time.monotonic() - started

        stack.stack.stop_postgres()
        reader = threading.Thread(target=step_start_reads)
        reader.start()
        try:
            time.sleep(READ_OUTAGE_S)  # the outage
        finally:
            stack.stack.start_postgres()
        reader.join(timeout=120)
        assert "error" not in outcome, outcome
        assert outcome["took"] >= READ_OUTAGE_S, outcome

        first = dagster.post("/graphql", json=graphql)
        assert first.status_code == 200, first.text
        assert first.json()["data"]["runsOrError"]["__typename"] == "Runs"
    report("dagster reads across a restart", down_s=READ_OUTAGE_S, read_took_s=outcome["took"])


def test_a_step_that_loses_the_database_is_retried_as_a_run(
    healthy_fault_stack: RunningStack,
) -> None:
    """A step failing on a lost database connection (not on its task) runs again once, by
    Dagster's run retries; a task error in the retry would not be retried again."""
    stack = healthy_fault_stack
    with stack.client() as client:
        task_id = stack.submit_image(
            client, task_data={"character_description": "FAULT_DB_LOST_ONCE detective"}
        )["task_id"]
        done = stack.wait_terminal(client, task_id, timeout=180)
    assert done["status"] == "completed", (done["error"], done["attempts"])
    assert done["error"] is None

    second, first = runs(stack, task_id)  # newest first
    assert (first.status.value, second.status.value) == ("FAILURE", "SUCCESS")
    assert first.tags[tags.RETRY_ON_STEP_FAILURE] == "true"
    assert first.tags[tags.WILL_RETRY] == "true"
    assert second.parent_run_id == first.run_id and second.tags[tags.RETRY_NUMBER] == "1"
    assert second.tags[tags.RETRY_ON_STEP_FAILURE] == "false"
    # The lost step never began an attempt: the one attempt is the retry's.
    assert [(a["attempt"], a["run_id"]) for a in done["attempts"]] == [(2, second.run_id)]
    assert done["attempt"] == 2
    assert len(media_files(stack, task_id)) == 1
    record = stack.instance().get_run_record_by_id(first.run_id)
    retried = stack.instance().get_run_record_by_id(second.run_id)
    assert record is not None and retried is not None
    assert record.end_time is not None and retried.start_time is not None
    report(
        "database lost at step start",
        failed_to_retry_started_s=retried.start_time - record.end_time,
    )


def test_redis_restart_under_load_loses_nothing(healthy_fault_stack: RunningStack) -> None:
    stack = healthy_fault_stack
    with stack.client() as client:
        in_flight = [stack.submit_image(client, task_data=IN_FLIGHT)["task_id"] for _ in range(2)]
        poll(lambda: all(status(client, t)["started_at"] for t in in_flight), 120)
        stack.stack.stop_redis()
        try:
            # Tasks are still accepted: they are durable in PostgreSQL, Redis only carries runs.
            during = [stack.submit_image(client)["task_id"] for _ in range(2)]
            health = client.get("/api/v1/health").json()
            time.sleep(DOWN_FOR_S)  # the outage
        finally:
            stack.stack.start_redis()
        back_at, back_wall = time.monotonic(), time.time()
        assert health["components"]["broker"] == "degraded"
        _completed_once(stack, client, [*in_flight, *during])
        all_done_s = time.monotonic() - back_at
        running_again_s = _first_start_after(client, [*in_flight, *during], back_wall)
    stack.stack.check_alive()
    poll(lambda: live_slots(stack) >= SLOTS, timeout=60)
    report(
        "redis restart",
        down_s=DOWN_FOR_S,
        redis_back_to_first_attempt_started_s=running_again_s,
        redis_back_to_all_completed_s=all_done_s,
    )
