"""Live task events as Server-Sent Events (every status change and preview until the terminal
state), and a task's latest preview image."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, DispatcherDep, PoolDep, SettingsDep, TaskDispatcher
from api.errors import ERROR_RESPONSES, ApiError
from api.routes.tasks import visible_task
from api.schemas import TaskStatus
from moviegen_dagster import store
from moviegen_dagster.db import DictPool
from moviegen_dagster.previews import Preview

log = logging.getLogger("moviegen.api.events")

# The channel the tasks trigger (migration 5) notifies with the task id on every change.
CHANNEL = "moviegen_task"
# Reconnection delay suggested to EventSource clients, milliseconds.
RETRY_MS = 3000
# Floor between two reads of one stream, so a burst of notifications costs a few reads.
MIN_READ_INTERVAL_S = 0.05


class TaskNotifier:
    """One LISTEN connection per API process, waking the open streams of a notified task.

    Streams also re-read on a timer, so a lost connection only delays events, never loses
    them: the stream always sends the task's current state, not a replay of notifications.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def subscribe(self, task_id: str) -> asyncio.Event:
        """An event set whenever the task changes (starts the listener on first use)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        return event

    def unsubscribe(self, task_id: str, event: asyncio.Event) -> None:
        """Forget a stream's event."""
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[task_id]

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    backoff = 0.5
                    async for note in conn.notifies():
                        for event in self._waiters.get(note.payload, ()):
                            event.set()
            except psycopg.Error as exc:
                log.warning("task notifications unavailable, streams poll: %s", exc)
            finally:
                self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def notifier(request: Request, settings: SettingsDep) -> TaskNotifier:
    """The app's notifier, made on first use."""
    state = request.app.state
    existing: TaskNotifier | None = getattr(state, "task_notifier", None)
    if existing is None:
        existing = TaskNotifier(settings.require_database_url())
        state.task_notifier = existing
    return existing


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Close the notifier's connection when the app stops."""
    yield
    existing: TaskNotifier | None = getattr(app.state, "task_notifier", None)
    if existing is not None:
        await existing.close()


router = APIRouter(
    prefix="/api/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES, lifespan=lifespan
)


def streamed_task(task_id: str, caller: CallerDep, pool: PoolDep) -> store.Row:
    """The caller's task or the same 404 as the status route (checked before streaming)."""
    return visible_task(pool, caller, task_id)


def _snapshot(
    pool: DictPool, dispatcher: TaskDispatcher, task_id: uuid.UUID, refresh: bool
) -> tuple[store.Row, int]:
    """The task's current row and event sequence, synced with Dagster first when asked."""
    with pool.connection() as conn:
        row = conn.execute(
            f"SELECT {store.TASK_COLUMNS}, event_seq, preview_seq "
            "FROM moviegen.tasks WHERE task_id = %s",
            (task_id,),
        ).fetchone()
    assert row is not None  # tasks are never deleted while visible
    if refresh and row["status"] in store.OPEN:
        before = row["status"], row["attempt"]
        synced = dispatcher.status(row)
        if (synced["status"], synced["attempt"]) != before:
            return _snapshot(pool, dispatcher, task_id, refresh=False)
    return row, int(row["event_seq"])


def _last_seen(header: str | None) -> int | None:
    """The client's Last-Event-ID as a sequence number (None when absent or not ours)."""
    if header is None or not header.strip().isdigit():
        return None
    return int(header.strip())


@router.get(
    "/{task_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`status` events (the TaskStatus document) while the task changes, "
            "`preview` events (kind, label, media type, size and the image as a `data_url`) "
            "as the take takes shape, then one `end` event; `id` is the task's change counter "
            "for `Last-Event-ID`. A (re)connected stream starts with the latest preview.",
            "content": {"text/event-stream": {}},
        }
    },
)
async def task_events(
    row: Annotated[store.Row, Depends(streamed_task)],
    pool: PoolDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    task_notifier: Annotated[TaskNotifier, Depends(notifier)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Stream a task's status changes and previews as Server-Sent Events until it is terminal."""
    task_id: uuid.UUID = row["task_id"]
    seen = _last_seen(last_event_id)
    wake = task_notifier.subscribe(str(task_id))
    refresh_every = settings.events_refresh_seconds
    next_refresh = 0.0
    first = True
    sent_doc: dict[str, Any] | None = None
    sent_preview = 0  # preview_seq of the last preview sent on this connection
    log.info("event stream opened", extra={"run_id": row["run_id"]})
    try:
        while True:
            wake.clear()
            now = time.monotonic()
            refresh = now >= next_refresh
            if refresh:
                next_refresh = now + refresh_every
            try:
                current, seq = await run_in_threadpool(
                    _snapshot, pool, dispatcher, task_id, refresh
                )
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # A database blip: keep the stream (keep-alives continue) and try again.
                log.warning("event stream could not read the task: %s", exc)
                await asyncio.sleep(refresh_every)
                continue
            if seen is not None and seq < seen:
                seen = None  # an id from another life of the stream: start over
            if seen is None or seq > seen:
                doc: dict[str, Any] = TaskStatus.from_row(current).model_dump(mode="json")
                if doc != sent_doc:
                    yield ServerSentEvent(
                        event="status", data=doc, id=str(seq), retry=RETRY_MS if first else None
                    )
                    sent_doc, first = doc, False
                seen = seq
            if int(current["preview_seq"]) > sent_preview:
                try:
                    preview = await run_in_threadpool(_preview, pool, task_id)
                except (psycopg.OperationalError, PoolTimeout) as exc:
                    log.warning("event stream could not read the preview: %s", exc)
                else:
                    if preview is not None:
                        yield ServerSentEvent(
                            event="preview",
                            data=preview.document(),
                            id=str(seq),
                            retry=RETRY_MS if first else None,
                        )
                        first = False
                    sent_preview = int(current["preview_seq"])
            if current["status"] in store.TERMINAL:
                log.info(
                    "event stream ended: task %s",
                    current["status"],
                    extra={"run_id": current["run_id"]},
                )
                yield ServerSentEvent(event="end", data={"status": current["status"]}, id=str(seq))
                return
            read_at = time.monotonic()
            timeout = max(next_refresh - read_at, MIN_READ_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            await asyncio.sleep(max(0.0, read_at + MIN_READ_INTERVAL_S - time.monotonic()))
    finally:
        task_notifier.unsubscribe(str(task_id), wake)


def _preview(pool: DictPool, task_id: uuid.UUID) -> Preview | None:
    with pool.connection() as conn:
        return store.get_preview(conn, task_id)


@router.get(
    "/{task_id}/preview",
    response_class=Response,
    responses={
        200: {
            "description": "The task's latest preview: a JPEG frame or image, or a PNG "
            "waveform. `X-Preview-Kind` and `X-Preview-Label` say what it shows.",
            "content": {"image/jpeg": {}, "image/png": {}},
        }
    },
)
def task_preview(task_id: str, caller: CallerDep, pool: PoolDep) -> Response:
    """The latest preview of a task's take (404 `no_preview` until the worker makes one)."""
    row = visible_task(pool, caller, task_id)
    preview = _preview(pool, row["task_id"])
    if preview is None:
        raise ApiError(404, "this task has no preview yet", code="no_preview")
    return Response(
        content=preview.data,
        media_type=preview.media_type,
        headers={
            "X-Preview-Kind": preview.kind,
            "X-Preview-Label": preview.label,
            "Cache-Control": "no-store",
        },
    )
