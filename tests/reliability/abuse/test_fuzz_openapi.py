"""Property-based fuzzing of the running API from its own OpenAPI document (schemathesis 4).

Every operation gets schema-valid (positive) and schema-violating (negative) requests over real
HTTP with a project key. No answer may be a 5xx. Half of the submissions are pointed at the
test's own project so that some are accepted; every accepted task is cancelled right after the
call that created it, so the workers do not render what the fuzzer queued (the task is still
queued, or at worst a few denoising steps in, when the cancel lands).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.conftest import RunningStack
from tests.reliability.abuse.conftest import Project

pytestmark = pytest.mark.reliability

MIN_REQUESTS = 1_000
EXAMPLES_PER_PASS = 40
MAX_SECONDS = 420
# Server-Sent Events never end for a live task; a generated id never names one, but a request
# that did would otherwise wait for ever.
CALL_TIMEOUT = 15


@dataclass
class Tally:
    """What the fuzzer sent and got back."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    cancelled: int = 0
    unsatisfiable: set[str] = field(default_factory=set)


def _aim_at_project(case: Any, project: Project, point: bool) -> None:
    """Point a generated submission at the test's project (else nearly all answer 403)."""
    if point and isinstance(case.body, dict) and "project_id" in case.body:
        case.body["project_id"] = project.project_id


def _cancel(client: httpx.Client, task_id: str) -> bool:
    resp = client.delete(f"/api/v1/tasks/{task_id}/cancel")
    return resp.status_code in (200, 409)  # 409: it had already failed (e.g. a bad input URL)


def test_fuzzed_requests_never_get_a_5xx(
    running_stack: RunningStack, stack_project: Project
) -> None:
    """≥1,000 generated requests over every operation: zero 5xx; accepted tasks cancelled."""
    api = running_stack.api_url
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", timeout=30)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the API's OpenAPI document has invalid operations"
    assert len(operations) >= 8, [op.label for op in operations]
    headers = {"X-API-Key": stack_project.key}
    tally = Tally()
    started = time.monotonic()
    session = requests.Session()

    with httpx.Client(base_url=api, headers=headers, timeout=30) as control:

        def run(op: Any, mode: GenerationMode) -> None:
            @given(case=op.as_strategy(generation_mode=mode), point=st.booleans())
            @settings(
                max_examples=EXAMPLES_PER_PASS,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def one(case: Any, point: bool) -> None:
                _aim_at_project(case, stack_project, point)
                try:
                    resp = case.call(
                        base_url=api, session=session, headers=headers, timeout=CALL_TIMEOUT
                    )
                except requests.exceptions.InvalidHeader:
                    return  # the client library refused to send it: nothing reached the API
                tally.requests += 1
                tally.statuses[resp.status_code] += 1
                tally.by_operation[op.label] += 1
                if resp.status_code >= 500:
                    curl = case.as_curl_command(headers, base_url=api)
                    tally.server_errors.append(f"{resp.status_code} {op.label}: {curl}")
                if resp.status_code == 202 and op.path.endswith("/submit"):
                    task_id = json.loads(resp.content)["task_id"]
                    tally.accepted.append(task_id)
                    tally.cancelled += _cancel(control, task_id)

            try:
                one()
            except Unsatisfiable:
                # Nothing schema-violating exists for an operation without inputs (/health).
                tally.unsatisfiable.add(f"{op.label} ({mode.value})")

        passes = 0
        while tally.requests < MIN_REQUESTS and time.monotonic() - started < MAX_SECONDS:
            for op in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    run(op, mode)
            passes += 1

        # A sweep after the fact catches a task accepted by a call the hook did not see.
        listing = control.get(
            f"/api/v1/projects/{stack_project.project_id}/tasks",
            params={"status": "queued", "limit": 100},
        ).json()
        for task in listing.get("tasks", []):
            tally.cancelled += _cancel(control, task["task_id"])

    elapsed = time.monotonic() - started
    print(
        f"\nfuzz: {tally.requests} requests in {elapsed:.1f}s over {len(operations)} operations "
        f"({passes} passes); statuses {dict(sorted(tally.statuses.items()))}; "
        f"accepted {len(tally.accepted)}, cancelled {tally.cancelled}; "
        f"per operation {dict(tally.by_operation)}; nothing to generate for "
        f"{sorted(tally.unsatisfiable)}"
    )
    assert not tally.server_errors, "\n".join(tally.server_errors[:20])
    assert tally.requests >= MIN_REQUESTS, tally.requests
    assert len(tally.by_operation) == len(operations), tally.by_operation
    # Every task the fuzzer got accepted has been cancelled (or had already failed).
    assert tally.cancelled >= len(tally.accepted)
