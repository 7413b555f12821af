"""`GET /metrics`: Prometheus exposition read from the database at scrape time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, set_task, submit
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from api.main import create_app
from moviegen_dagster.settings import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of one scrape, keyed by name and sorted labels."""
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series is absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a series grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def _finish(
    conn: psycopg.Connection[Any], task_id: str, status: str, seconds: float, **columns: Any
) -> None:
    # The error is stored before (or with) the terminal status, as the ops and sensors do.
    if columns:
        set_task(conn, task_id, **columns)
    conn.execute(
        "UPDATE moviegen.tasks SET status = %s, started_at = now() - make_interval(secs => %s), "
        "completed_at = now() WHERE task_id = %s",
        (status, seconds, uuid.UUID(task_id)),
    )


def test_task_metrics_follow_the_rows(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    before = scrape(client)
    image = {"task_type": "generate_image", "priority": 3}
    queued = [submit(client, project, **image)["task_id"] for _ in range(3)]
    done, failed, cancelled = queued
    # Still 3 queued here: the scrape reads rows as they are now.
    mid = scrape(client)
    labels = {"task_type": "generate_image", "priority": "3", "worker_type": "gpu_light"}
    assert delta(before, mid, "moviegen_queue_depth", **labels) == 3

    _finish(conn, done, "completed", 7.0)
    _finish(
        conn,
        failed,
        "failed",
        40.0,
        attempt=3,
        error={"code": "input_refused", "message": "reference_images[0]: refused"},
    )
    _finish(conn, cancelled, "cancelled", 1.5)
    after = scrape(client)

    assert delta(before, after, "moviegen_queue_depth", **labels) == 0
    hist = "moviegen_task_duration_seconds"
    ok = {"task_type": "generate_image", "outcome": "completed"}
    assert delta(before, after, f"{hist}_count", **ok) == 1
    assert delta(before, after, f"{hist}_bucket", le="5.0", **ok) == 0
    assert delta(before, after, f"{hist}_bucket", le="10.0", **ok) == 1
    assert delta(before, after, f"{hist}_bucket", le="+Inf", **ok) == 1
    assert delta(before, after, f"{hist}_sum", **ok) == pytest.approx(7.0, abs=0.5)
    bad = {"task_type": "generate_image", "outcome": "failed"}
    assert delta(before, after, f"{hist}_bucket", le="30.0", **bad) == 0
    assert delta(before, after, f"{hist}_bucket", le="60.0", **bad) == 1
    for outcome in ("completed", "failed", "cancelled"):
        finished = {"task_type": "generate_image", "outcome": outcome}
        assert delta(before, after, "moviegen_tasks_finished_total", **finished) == 1
    reason = {"task_type": "generate_image", "reason": "input_refused"}
    assert delta(before, after, "moviegen_task_failures_total", **reason) == 1
    assert delta(before, after, "moviegen_task_retries_total", task_type="generate_image") == 2


def test_no_project_or_task_ids_in_labels(client: TestClient, project: Project) -> None:
    task_id = submit(client, project)["task_id"]
    text = client.get("/metrics").text
    assert project.project_id not in text
    assert task_id not in text


@pytest.fixture
def clean_workers(conn: psycopg.Connection[Any]) -> Iterator[None]:
    conn.execute("DELETE FROM moviegen.workers")
    yield
    conn.execute("DELETE FROM moviegen.workers")


def _worker(conn: psycopg.Connection[Any], wid: str, wtype: str, status: str, **cols: Any) -> None:
    heartbeat_age = cols.pop("heartbeat_age", 0)
    conn.execute(
        "INSERT INTO moviegen.workers (worker_id, worker_type, hostname, pid, status, "
        "gpu_utilization, last_heartbeat) "
        "VALUES (%s, %s, 'h', 1, %s, %s, now() - make_interval(secs => %s))",
        (wid, wtype, status, cols.get("gpu"), heartbeat_age),
    )


@pytest.mark.usefixtures("clean_workers")
def test_worker_metrics(client: TestClient, conn: psycopg.Connection[Any]) -> None:
    _worker(conn, "light-1", "gpu_light", "busy", gpu=0.9)
    _worker(conn, "light-2", "gpu_light", "idle", gpu=0.3)
    _worker(conn, "heavy-1", "gpu_heavy", "busy")
    # Silent past the dead-worker timeout: offline, and its last GPU reading is not current.
    _worker(conn, "light-dead", "gpu_light", "busy", gpu=0.0, heartbeat_age=120)
    # Silent for days: history, not counted.
    _worker(conn, "light-old", "gpu_light", "idle", heartbeat_age=3 * 86400)
    samples = scrape(client)
    workers = "moviegen_workers"
    assert value(samples, workers, worker_type="gpu_light", state="busy") == 1
    assert value(samples, workers, worker_type="gpu_light", state="idle") == 1
    assert value(samples, workers, worker_type="gpu_light", state="offline") == 1
    assert value(samples, workers, worker_type="gpu_heavy", state="busy") == 1
    gpu = "moviegen_worker_gpu_utilization"
    assert value(samples, gpu, worker_type="gpu_light") == pytest.approx(0.6)
    assert ("moviegen_worker_gpu_utilization", (("worker_type", "gpu_heavy"),)) not in samples


def test_webhook_metrics(
    client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    before = scrape(client)
    tasks = [submit(client, project)["task_id"] for _ in range(3)]
    ages = {"pending": 90, "delivered": 3, "dead": 50000}
    for (kind, age), task_id in zip(ages.items(), tasks, strict=True):
        conn.execute(
            """
            INSERT INTO moviegen.webhook_outbox (webhook_id, task_id, task_attempt, event, url,
                payload, created_at, delivered_at, dead_at)
            VALUES (%s, %s, 1, 'task.completed', 'https://example.com/hook', %s,
                now() - make_interval(secs => %s),
                CASE WHEN %s = 'delivered' THEN now() END,
                CASE WHEN %s = 'dead' THEN now() END)
            """,
            (f"msg_{uuid.uuid4().hex}", uuid.UUID(task_id), Jsonb({}), age, kind, kind),
        )
    after = scrape(client)
    assert delta(before, after, "moviegen_webhook_pending") == 1
    assert value(after, "moviegen_webhook_oldest_pending_age_seconds") >= 90
    assert delta(before, after, "moviegen_webhook_events_total", outcome="delivered") == 1
    assert delta(before, after, "moviegen_webhook_events_total", outcome="dead") == 1
    lag = "moviegen_webhook_delivery_lag_seconds"
    assert delta(before, after, f"{lag}_bucket", le="2.0") == 0
    assert delta(before, after, f"{lag}_bucket", le="5.0") == 1
    assert delta(before, after, f"{lag}_count") == 1


def test_switched_off(settings: Settings, dispatcher: Any) -> None:
    off = settings.model_copy(update={"metrics_enabled": False})
    with TestClient(create_app(off, dispatcher=dispatcher)) as off_client:
        assert_error(off_client.get("/metrics"), 404, "not_found")
