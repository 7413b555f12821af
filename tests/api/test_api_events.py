"""The SSE stream of a task: events as the stored row changes, end on terminal, resume, 404s."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from api_helpers import Project, assert_error, set_task, submit
from fastapi.testclient import TestClient

from moviegen_dagster.cli_client import SseEvent, parse_sse

TIMEOUT = 15.0


class StreamReader:
    """Reads a task's event stream on a thread; the test takes events as they arrive."""

    def __init__(
        self, client: TestClient, task_id: str, headers: dict[str, str], last_id: str | None = None
    ) -> None:
        self.events: queue.Queue[SseEvent | None] = queue.Queue()
        self.status_code: int | None = None
        self.content_type: str | None = None
        self.error: BaseException | None = None
        if last_id is not None:
            headers = {**headers, "Last-Event-ID": last_id}
        self._thread = threading.Thread(
            target=self._run, args=(client, task_id, headers), daemon=True
        )
        self._thread.start()

    def _run(self, client: TestClient, task_id: str, headers: dict[str, str]) -> None:
        try:
            with client.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers) as resp:
                self.status_code = resp.status_code
                self.content_type = resp.headers.get("content-type")
                for event in parse_sse(resp.iter_lines()):
                    self.events.put(event)
        except BaseException as exc:  # reported by next()
            self.error = exc
        finally:
            self.events.put(None)

    def next(self) -> SseEvent:
        """The next event (fails after a deadline, or if the stream closed first)."""
        event = self.events.get(timeout=TIMEOUT)
        assert event is not None, f"stream closed early (error: {self.error!r})"
        return event

    def rest(self) -> list[SseEvent]:
        """Every remaining event until the server closes the stream."""
        out: list[SseEvent] = []
        while (event := self.events.get(timeout=TIMEOUT)) is not None:
            out.append(event)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        assert self.error is None, self.error
        return out


@pytest.fixture
def task_id(client: TestClient, project: Project) -> str:
    """A fresh queued task."""
    return str(submit(client, project)["task_id"])


def test_stream_follows_changes_until_terminal(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, task_id: str
) -> None:
    reader = StreamReader(client, task_id, project.headers)
    first = reader.next()
    assert reader.status_code == 200
    assert reader.content_type is not None and reader.content_type.startswith("text/event-stream")
    assert first.event == "status"
    assert first.json()["status"] == "queued" and first.json()["task_id"] == task_id

    # Each committed change arrives as its own event (LISTEN/NOTIFY wakes the stream).
    set_task(conn, task_id, status="processing", progress=0.25, current_step="loading_model")
    second = reader.next()
    assert second.json()["status"] == "processing"
    assert second.json()["progress"] == 0.25
    assert second.json()["current_step"] == "loading_model"
    set_task(conn, task_id, progress=0.75, current_step="generating_image")
    third = reader.next()
    assert (third.json()["progress"], third.json()["current_step"]) == (0.75, "generating_image")
    # A write that changes nothing a client sees (the run id) is not an event.
    set_task(conn, task_id, run_id="some-run")
    conn.execute(
        "UPDATE moviegen.tasks SET status = 'completed', progress = 1.0, "
        "current_step = 'upload_complete', completed_at = now(), "
        "result = '{\"metadata\": {}}'::jsonb WHERE task_id = %s",
        (uuid.UUID(task_id),),
    )
    rest = reader.rest()
    assert [e.event for e in rest] == ["status", "end"]
    assert rest[0].json()["status"] == "completed"
    assert rest[1].json() == {"status": "completed"}

    ids = [int(e.id or -1) for e in (first, second, third, rest[0])]
    assert ids == sorted(ids) and len(set(ids)) == 4, ids
    assert rest[1].id == rest[0].id


def test_resume_with_last_event_id(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, task_id: str
) -> None:
    set_task(conn, task_id, status="processing", progress=0.5, current_step="generating_image")
    reader = StreamReader(client, task_id, project.headers)
    seen = reader.next()
    assert seen.json()["progress"] == 0.5
    set_task(conn, task_id, status="cancelled", current_step="cancelled")
    rest = reader.rest()
    final_id = rest[-1].id
    assert [e.event for e in rest] == ["status", "end"]

    # A client that saw everything only hears that the stream is over.
    again = StreamReader(client, task_id, project.headers, last_id=final_id).rest()
    assert [e.event for e in again] == ["end"]
    # One that missed the end gets the current state, then the end.
    behind = StreamReader(client, task_id, project.headers, last_id=seen.id).rest()
    assert [e.event for e in behind] == ["status", "end"]
    assert behind[0].json()["status"] == "cancelled"
    # A garbled id is ignored rather than refused.
    garbled = StreamReader(client, task_id, project.headers, last_id="not-a-number").rest()
    assert [e.event for e in garbled] == ["status", "end"]


def test_keepalive_comment_while_nothing_changes(
    client: TestClient, project: Project, task_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastapi.routing

    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.3)
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=project.headers) as resp:
        lines = _lines_until(resp.iter_lines(), lambda line: line.startswith(":"))
    assert any(line.startswith("event: status") for line in lines)
    assert lines[-1].startswith(":")


def _lines_until(lines: Iterator[str], stop: Any, limit: int = 50) -> list[str]:
    out: list[str] = []
    for line in lines:
        out.append(line)
        if stop(line) or len(out) >= limit:
            break
    return out


def test_other_projects_task_is_an_unknown_task(
    client: TestClient, project: Project, other_project: Project, task_id: str
) -> None:
    foreign = client.get(f"/api/v1/tasks/{task_id}/events", headers=other_project.headers)
    unknown = client.get(
        "/api/v1/tasks/00000000-0000-4000-8000-000000000000/events", headers=project.headers
    )
    malformed = client.get("/api/v1/tasks/not-a-uuid/events", headers=project.headers)
    for resp in (foreign, unknown, malformed):
        assert_error(resp, 404, "not_found")
    assert foreign.json() == unknown.json() == malformed.json()
    status = client.get(f"/api/v1/tasks/{task_id}/status", headers=other_project.headers)
    assert status.json() == foreign.json()


def test_needs_a_key(client: TestClient, task_id: str) -> None:
    assert_error(client.get(f"/api/v1/tasks/{task_id}/events"), 401, "unauthorized", "X-API-Key")


def test_admin_key_streams_any_project(
    client: TestClient, conn: psycopg.Connection[Any], admin_headers: dict[str, str], task_id: str
) -> None:
    set_task(conn, task_id, status="failed", error={"code": "boom", "message": "it broke"})
    events = StreamReader(client, task_id, admin_headers).rest()
    assert [e.event for e in events] == ["status", "end"]
    assert events[0].json()["error"] == "it broke"


def _frame(label: str, shade: int) -> Any:
    import numpy as np

    from moviegen_dagster.previews import frame_preview

    return frame_preview(np.full((180, 320, 3), shade, dtype=np.uint8), label)


def test_previews_arrive_as_events_and_from_the_preview_route(
    client: TestClient, conn: psycopg.Connection[Any], project: Project, task_id: str
) -> None:
    import base64
    import io

    import PIL.Image

    from moviegen_dagster import store

    missing = client.get(f"/api/v1/tasks/{task_id}/preview", headers=project.headers)
    assert_error(missing, 404, "no_preview")

    set_task(conn, task_id, status="processing", progress=0.4, current_step="rendering_video")
    reader = StreamReader(client, task_id, project.headers)
    assert reader.next().event == "status"
    assert store.save_preview(conn, task_id, _frame("clip 1 of 2", 40))
    preview = reader.next()
    # A preview changes no status field, so it is a preview event alone.
    assert preview.event == "preview"
    doc = preview.json()
    assert (doc["kind"], doc["label"], doc["media_type"]) == ("frame", "clip 1 of 2", "image/jpeg")
    header, encoded = doc["data_url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    decoded = PIL.Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert decoded.size == (doc["width"], doc["height"]) == (320, 180)

    assert store.save_preview(conn, task_id, _frame("clip 2 of 2", 200))
    assert reader.next().json()["label"] == "clip 2 of 2"
    latest = client.get(f"/api/v1/tasks/{task_id}/preview", headers=project.headers)
    assert latest.status_code == 200 and latest.headers["content-type"] == "image/jpeg"
    assert latest.headers["x-preview-label"] == "clip 2 of 2"
    assert PIL.Image.open(io.BytesIO(latest.content)).getpixel((5, 5))[0] > 150

    # A reconnecting client starts with the latest preview; a finished task takes no more.
    resumed = StreamReader(client, task_id, project.headers, last_id=preview.id)
    assert [e.event for e in (resumed.next(), resumed.next())] == ["status", "preview"]
    set_task(conn, task_id, status="cancelled", current_step="cancelled")
    assert not store.save_preview(conn, task_id, _frame("too late", 0))
    assert [e.event for e in reader.rest()] == ["status", "end"]
    assert [e.event for e in resumed.rest()] == ["status", "end"]


def test_preview_of_another_projects_task_is_an_unknown_task(
    client: TestClient,
    conn: psycopg.Connection[Any],
    project: Project,
    other_project: Project,
    task_id: str,
) -> None:
    from moviegen_dagster import store

    set_task(conn, task_id, status="processing")
    assert store.save_preview(conn, task_id, _frame("clip 1 of 1", 90))
    foreign = client.get(f"/api/v1/tasks/{task_id}/preview", headers=other_project.headers)
    unknown = client.get(
        "/api/v1/tasks/00000000-0000-4000-8000-000000000000/preview", headers=project.headers
    )
    assert_error(foreign, 404, "not_found")
    assert foreign.content == unknown.content
