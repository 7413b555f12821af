"""One dedicated stack for the fault scenarios (kills, restarts, out-of-memory, timeouts).

It is shared by every scenario of this package: each scenario leaves the stack healthy again
(processes respawned, services restarted) and the `healthy_fault_stack` fixture checks that
before the next one starts. It is separate from the session's `running_stack`, which other
tests use and which these scenarios would disturb.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from dagster import RunsFilter

from tests.conftest import KEY_A, PROJECT_A, AssetServer, RunningStack, poll, start_stack

# The audio maximum runtime is tiny on this stack: scenario 6 times out a process_audio task.
# No other scenario submits audio.
AUDIO_MAX_RUNTIME_S = 8
WORKER_DEAD_AFTER_S = 6
HEARTBEAT_S = 1
MONITOR_POLL_S = 2  # run_monitoring.poll_interval_seconds in stack.py's dagster.yaml
OOM_RETRY_BASE_S = 0.5
OOM_MAX_RETRIES = 2
RUN_MAX_RETRIES = 2
SLOTS = 2


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack of its own: two gpu_light slots, no video worker, faults armed, short limits."""
    with start_stack(
        tmp_path_factory.mktemp("faults"),
        MOVIEGEN_API_KEYS=f"{KEY_A}:{PROJECT_A}",
        MOVIEGEN_WORKERS=f"gpu_heavy=0,gpu_light={SLOTS}",
        MOVIEGEN_FAULT_INJECTION="1",
        MOVIEGEN_RECONCILE_AFTER_SECONDS="3",
        MOVIEGEN_DEQUEUE_INTERVAL_SECONDS="0",
        MOVIEGEN_WORKER_DEAD_AFTER_SECONDS=str(WORKER_DEAD_AFTER_S),
        MOVIEGEN_HEARTBEAT_SECONDS=str(HEARTBEAT_S),
        MOVIEGEN_URL_ALLOWLIST="127.0.0.1",
        MOVIEGEN_MAX_RUNTIME_AUDIO=str(AUDIO_MAX_RUNTIME_S),
        MOVIEGEN_OOM_RETRY_BASE_SECONDS=str(OOM_RETRY_BASE_S),
        MOVIEGEN_OOM_MAX_RETRIES=str(OOM_MAX_RETRIES),
        MOVIEGEN_RUN_MAX_RETRIES=str(RUN_MAX_RETRIES),
    ) as stack:
        yield stack


@pytest.fixture
def healthy_fault_stack(fault_stack: RunningStack) -> RunningStack:
    """The fault stack, once every process is alive and every component reports healthy."""
    fault_stack.stack.check_alive()

    def healthy() -> bool:
        try:
            resp = httpx.get(f"{fault_stack.api_url}/api/v1/health", timeout=5)
        except httpx.HTTPError:
            return False
        comps = resp.json().get("components", {}) if resp.status_code == 200 else {}
        return bool(comps) and all(v == "healthy" for v in comps.values())

    poll(healthy, timeout=90, interval=0.5)
    poll(lambda: live_slots(fault_stack) >= SLOTS, timeout=90, interval=0.5)
    return fault_stack


@pytest.fixture
def receiver() -> Iterator[AssetServer]:
    """A callback receiver (and input server) of the test's own."""
    server = AssetServer()
    yield server
    server.close()


# -- helpers ---------------------------------------------------------------------------


def db(stack: RunningStack) -> psycopg.Connection[Any]:
    """A short-lived connection to the stack's database."""
    return psycopg.connect(stack.env["DATABASE_URL"], autocommit=True)


def live_slots(stack: RunningStack) -> int:
    """Worker slots that heartbeat and are idle."""
    try:
        with db(stack) as conn:
            row = conn.execute(
                "SELECT count(*) FROM moviegen.workers WHERE status = 'idle' "
                "AND last_heartbeat > now() - make_interval(secs => %s)",
                (WORKER_DEAD_AFTER_S,),
            ).fetchone()
    except psycopg.OperationalError:
        return 0
    return int(row[0]) if row else 0


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    """The task's status document."""
    resp = client.get(f"/api/v1/tasks/{task_id}/status")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def runs(stack: RunningStack, task_id: str) -> list[Any]:
    """Every Dagster run of a task, newest first."""
    return list(stack.instance().get_runs(RunsFilter(tags={"moviegen/task_id": task_id})))


def slot_of(stack: RunningStack, task_id: str) -> tuple[str, int] | None:
    """(worker_id, pid) of the slot executing the task, once it claimed it."""
    with db(stack) as conn:
        row = conn.execute(
            "SELECT worker_id, pid FROM moviegen.workers WHERE current_task_id = %s",
            (uuid.UUID(task_id),),
        ).fetchone()
    return (str(row[0]), int(row[1])) if row else None


def media_files(stack: RunningStack, task_id: str) -> list[Path]:
    """Delivered media files of a task in the local media store."""
    return sorted((Path(stack.env["MOVIEGEN_HOME"]) / "media").rglob(f"{task_id}.*"))


def outbox(stack: RunningStack, task_id: str) -> list[tuple[str, int, bool]]:
    """(event, attempts, delivered) of each outbox row of a task."""
    with db(stack) as conn:
        rows = conn.execute(
            "SELECT event, attempts, delivered_at IS NOT NULL FROM moviegen.webhook_outbox "
            "WHERE task_id = %s ORDER BY id",
            (uuid.UUID(task_id),),
        ).fetchall()
    return [(str(r[0]), int(r[1]), bool(r[2])) for r in rows]


def assert_delivered_once(
    stack: RunningStack, receiver: AssetServer, path: str, task_id: str, event: str
) -> None:
    """Exactly one callback POST for the task, recorded once as delivered in the outbox."""
    poll(lambda: receiver.received.get(path), timeout=60)
    poll(lambda: outbox(stack, task_id) == [(event, 1, True)], timeout=60)
    posts = [body for _, body in receiver.received.get(path, []) if task_id.encode() in body]
    assert len(posts) == 1, f"{len(posts)} callbacks for {task_id}"


def run_failed_at(stack: RunningStack, task_id: str) -> float | None:
    """When the task's first failed run was marked FAILURE (epoch seconds), if it was."""
    instance = stack.instance()
    for run in runs(stack, task_id):
        if run.status.value == "FAILURE":
            record = instance.get_run_record_by_id(run.run_id)
            return record.end_time if record is not None else time.time()
    return None


def report(name: str, **numbers: float) -> None:
    """Print measured bounds (shown with -s or -rA; collected into docs/reliability.md)."""
    values = ", ".join(f"{k}={v:.2f}" for k, v in numbers.items())
    print(f"[reliability] {name}: {values}")
