"""Scenario 3: SIGKILL of the API during a burst of submissions whose clients retry with the
same Idempotency-Key: exactly as many tasks as distinct keys, each run once."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, PROJECT_A, RunningStack, poll
from tests.reliability.faults.conftest import db, media_files, report, runs

pytestmark = pytest.mark.reliability

CLIENTS = 8
RETRY_DEADLINE_S = 120.0


class RetryingClient(threading.Thread):
    """Submits one task and retries, same key and body, until it gets an answer."""

    def __init__(self, api_url: str, body: dict[str, Any], key: str) -> None:
        super().__init__(daemon=True)
        self.api_url, self.body, self.key = api_url, body, key
        self.tries = 0
        self.errors: list[str] = []
        self.answer: httpx.Response | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        headers = {"X-API-Key": KEY_A, "Idempotency-Key": self.key}
        deadline = time.monotonic() + RETRY_DEADLINE_S
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=10) as client:
            while time.monotonic() < deadline:
                self.tries += 1
                try:
                    resp = client.post("/api/v1/tasks/submit", json=self.body)
                except httpx.HTTPError as exc:  # the API died under the request, or is down
                    self.errors.append(type(exc).__name__)
                    time.sleep(0.2)  # a client's back-off before retrying, not a sync
                    continue
                if resp.status_code >= 500:
                    self.errors.append(str(resp.status_code))
                    time.sleep(0.2)
                    continue
                self.answer, self.answered_at = resp, time.monotonic()
                return


def test_api_killed_mid_burst_creates_one_task_per_idempotency_key(
    healthy_fault_stack: RunningStack,
) -> None:
    stack = healthy_fault_stack
    burst = f"burst{uuid.uuid4().hex[:12]}"
    clients = [
        RetryingClient(
            stack.api_url,
            {
                "project_id": PROJECT_A,
                "task_type": "generate_image",
                "task_data": {"character_description": f"Burst {i}", "resolution": "256x256"},
                "metadata": {"character_id": f"c{i}", "user_id": burst},
            },
            key=f"{burst}-{i}",
        )
        for i in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    # Kill as soon as the burst is under way: some answered, others in flight or not sent.
    poll(lambda: any(c.answer is not None for c in clients), timeout=60, interval=0.02)
    stack.stack.kill("api")
    killed = time.monotonic()
    stack.stack.respawn("api")
    for c in clients:
        c.join(RETRY_DEADLINE_S + 10)

    answers = [c.answer for c in clients]
    assert all(a is not None and a.status_code == 202 for a in answers), [
        (c.key, c.answer and c.answer.text, c.errors) for c in clients
    ]
    task_ids = [str(a.json()["task_id"]) for a in answers if a is not None]
    assert len(set(task_ids)) == CLIENTS
    with db(stack) as conn:
        stored = conn.execute(
            "SELECT task_id::text FROM moviegen.tasks WHERE metadata->>'user_id' = %s", (burst,)
        ).fetchall()
    assert sorted(r[0] for r in stored) == sorted(task_ids)  # as many tasks as distinct keys
    retried = [c for c in clients if c.errors]
    assert retried, "the kill hit no request; the scenario proved nothing"

    with stack.client() as client:
        for task_id in task_ids:
            assert stack.wait_terminal(client, task_id, timeout=240)["status"] == "completed"
            assert len(runs(stack, task_id)) == 1
            assert len(media_files(stack, task_id)) == 1
    recovered = max(c.answered_at for c in retried) - killed
    report(
        "kill api mid-burst",
        clients=CLIENTS,
        clients_that_retried=len(retried),
        max_tries=max(c.tries for c in clients),
        kill_to_last_answer_s=recovered,
    )
