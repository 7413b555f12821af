"""Per-project submit rate limits and queue caps: 429 with a computed Retry-After."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from api_helpers import Project, assert_error, set_task, submission
from fastapi.testclient import TestClient
from fault_app import live_api

from moviegen_dagster.settings import Settings

URL = "/api/v1/tasks/submit"


def _post(
    client: TestClient | httpx.Client, project: Project, key: str | None = None, **overrides: Any
) -> Any:
    headers = {"X-API-Key": project.key}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(URL, json=submission(project.project_id, **overrides), headers=headers)


def _queued(conn: psycopg.Connection[Any], project: Project) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM moviegen.tasks WHERE project_id = %s AND status = 'queued'",
        (project.project_id,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_defaults_are_generous() -> None:
    settings = Settings()
    assert settings.submit_rate_per_minute == 120
    assert settings.submit_burst == 60
    assert settings.max_queued_per_project == 1000
    assert settings.idempotency_ttl_hours == 24
    assert settings.outbox_retention_days == 7


def test_burst_then_429_with_retry_after(
    client: TestClient, project: Project, clock: Any, configure: Any
) -> None:
    # One token every 10 s, three at once.
    configure(submit_rate_per_minute=6, submit_burst=3, max_queued_per_project=0)
    assert [_post(client, project).status_code for _ in range(3)] == [202] * 3
    resp = _post(client, project)
    body = assert_error(resp, 429, "rate_limited", None)
    assert project.project_id in body["error"]["message"]
    assert resp.headers["retry-after"] == "10"
    clock.advance(seconds=7.5)
    resp = _post(client, project)
    assert_error(resp, 429, "rate_limited", None)
    assert resp.headers["retry-after"] == "3"  # 2.5 s, rounded up
    clock.advance(seconds=2.5)
    assert _post(client, project).status_code == 202
    assert _post(client, project).status_code == 429
    # A long pause refills up to the burst, not beyond.
    clock.advance(hours=1)
    assert [_post(client, project).status_code for _ in range(4)] == [202, 202, 202, 429]


def test_one_project_over_its_limit_leaves_another_alone(
    client: TestClient, project: Project, other_project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=1, submit_burst=1, max_queued_per_project=0)
    assert _post(client, project).status_code == 202
    assert _post(client, project).status_code == 429
    assert _post(client, other_project).status_code == 202


def test_replays_take_no_token(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=1, submit_burst=2, max_queued_per_project=0)
    first = _post(client, project, key="k-replay")
    for _ in range(5):
        again = _post(client, project, key="k-replay")
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
    assert _post(client, project).status_code == 202  # the second token is still there
    assert _post(client, project).status_code == 429
    # Over the limit, a replay is still answered: it asks for nothing new.
    late = _post(client, project, key="k-replay")
    assert late.status_code == 202
    assert late.json() == first.json()
    assert _queued(conn, project) == 2


def test_queue_cap_is_429_queue_full(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=0, max_queued_per_project=2)
    ids = [_post(client, project).json()["task_id"] for _ in range(2)]
    resp = _post(client, project)
    body = assert_error(resp, 429, "queue_full", None)
    assert "2 queued" in body["error"]["message"]
    # Nothing runs: the wait is the shortest estimate among the queued tasks.
    shortest = conn.execute(
        "SELECT min(estimated_duration) AS s FROM moviegen.tasks WHERE project_id = %s",
        (project.project_id,),
    ).fetchone()
    assert shortest is not None
    assert resp.headers["retry-after"] == str(shortest["s"])
    # One starts, expected to take 300 s, 100 s ago: the next slot is ~200 s away.
    set_task(
        conn,
        ids[0],
        status="processing",
        started_at=clock.now - timedelta(seconds=100),
        estimated_duration=300,
    )
    assert _post(client, project).status_code == 202
    resp = _post(client, project)
    assert_error(resp, 429, "queue_full", None)
    assert resp.headers["retry-after"] == "200"
    assert _queued(conn, project) == 2
    set_task(conn, ids[1], status="cancelled")
    assert _post(client, project).status_code == 202


def test_a_refused_submission_gives_its_token_back(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=1, submit_burst=2, max_queued_per_project=1)
    task_id = _post(client, project).json()["task_id"]
    assert_error(_post(client, project), 429, "queue_full", None)
    assert_error(_post(client, project), 429, "queue_full", None)
    set_task(conn, task_id, status="cancelled")
    # The queue_full answers were rolled back, token included: one is left.
    assert _post(client, project).status_code == 202
    set_task(conn, _newest(conn, project), status="cancelled")
    assert_error(_post(client, project), 429, "rate_limited", None)


def _newest(conn: psycopg.Connection[Any], project: Project) -> str:
    row = conn.execute(
        "SELECT task_id FROM moviegen.tasks WHERE project_id = %s ORDER BY created_at DESC LIMIT 1",
        (project.project_id,),
    ).fetchone()
    assert row is not None
    return str(row["task_id"])


def test_zero_disables_the_rate_limit(
    client: TestClient, project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=0, submit_burst=1, max_queued_per_project=3)
    answers = [_post(client, project) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    assert {a.json()["error"]["code"] for a in answers[3:]} == {"queue_full"}


def test_zero_disables_the_queue_cap(
    client: TestClient, project: Project, clock: Any, configure: Any
) -> None:
    configure(submit_rate_per_minute=600, submit_burst=5, max_queued_per_project=0)
    answers = [_post(client, project) for _ in range(6)]
    assert [a.status_code for a in answers] == [202] * 5 + [429]
    assert answers[5].json()["error"]["code"] == "rate_limited"


def test_concurrent_submissions_never_exceed_the_cap(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, configure: Any
) -> None:
    configure(submit_rate_per_minute=0, max_queued_per_project=5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda _: _post(client, project).status_code, range(16)))
    assert sorted(codes) == [202] * 5 + [429] * 11
    assert _queued(conn, project) == 5


def test_api_processes_share_one_bucket(
    database_url: str, conn: psycopg.Connection[Any], project: Project, tmp_path: Path
) -> None:
    env = {
        "MOVIEGEN_SUBMIT_RATE_PER_MINUTE": "0.5",
        "MOVIEGEN_SUBMIT_BURST": "3",
        "MOVIEGEN_MAX_QUEUED_PER_PROJECT": "0",
    }
    with (
        live_api(database_url, tmp_path / "a", project.key, project.project_id, extra_env=env) as a,
        live_api(database_url, tmp_path / "b", project.key, project.project_id, extra_env=env) as b,
        httpx.Client(base_url=a.base_url, timeout=30) as ca,
        httpx.Client(base_url=b.base_url, timeout=30) as cb,
    ):
        answers = [_post(c, project) for c in (ca, cb, ca, cb, ca, cb)]
    codes = [r.status_code for r in answers]
    assert codes.count(202) == 3 and codes.count(429) == 3, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
    assert _queued(conn, project) == 3


def test_a_refused_project_is_refused_again_without_the_database(
    client: TestClient, project: Project, clock: Any, configure: Any, monkeypatch: Any
) -> None:
    """Until its bucket can hold a token again, a flooding project costs no query."""
    from moviegen_dagster import limits

    configure(submit_rate_per_minute=6, submit_burst=1, max_queued_per_project=0)
    admitted: list[str] = []
    real = limits.admit_and_insert

    def counting(*args: Any, **kwargs: Any) -> Any:
        admitted.append("db")
        return real(*args, **kwargs)

    monkeypatch.setattr(limits, "admit_and_insert", counting)
    assert _post(client, project).status_code == 202
    first = _post(client, project)
    assert_error(first, 429, "rate_limited", None)
    assert len(admitted) == 2
    clock.advance(seconds=4)
    again = [_post(client, project) for _ in range(5)]
    assert len(admitted) == 2  # answered from memory
    for resp in again:
        body = assert_error(resp, 429, "rate_limited", None)
        assert body["error"]["message"] == first.json()["error"]["message"]
        assert resp.headers["retry-after"] == "6"
    # An Idempotency-Key may be a replay: the database answers it.
    assert _post(client, project, key="maybe-a-replay").status_code == 429
    assert len(admitted) == 3
    # Once a token is due, the database decides again.
    clock.advance(seconds=6)
    assert _post(client, project).status_code == 202
    assert len(admitted) == 4
