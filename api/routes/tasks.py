"""Task routes: submit, status, cancel, retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from api.deps import (
    CallerDep,
    DispatcherDep,
    EmptyBucketsDep,
    NowDep,
    PoolDep,
    SettingsDep,
    require_json,
    require_key,
    visible_projects,
)
from api.errors import ERROR_RESPONSES, ApiError
from api.schemas import TaskAccepted, TaskStatus, TaskSubmit, json_size
from moviegen_dagster import idempotency, limits, store
from moviegen_dagster.db import DictPool
from moviegen_dagster.fetch import Allowlist, FetchError, check_url_static
from moviegen_dagster.keys import Caller

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)

# Unknown, malformed and other projects' ids all get exactly this body (no existence leak).
TASK_NOT_FOUND = "task not found"
# Marks the answer to a submission that repeated an earlier one's Idempotency-Key and body.
REPLAYED_HEADER = "Idempotent-Replayed"


def visible_task(pool: DictPool, caller: Caller, task_id: str) -> store.Row:
    """The caller's task, or 404; the scope is applied by the query itself."""
    with pool.connection() as conn:
        row = store.get_task(conn, task_id, visible_projects(caller))
    if row is None:
        raise ApiError(404, TASK_NOT_FOUND)
    return row


@router.post(
    "/submit",
    status_code=202,
    response_model=TaskAccepted,
    dependencies=[Depends(require_key), Depends(require_json)],
)
def submit_task(
    body: TaskSubmit,
    caller: CallerDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    now: NowDep,
    empty: EmptyBucketsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description=(
                "1-255 printable ASCII characters. The same key with the same body in the same "
                "project answers the first task again (header Idempotent-Replayed: true); with "
                "another body, 409."
            ),
        ),
    ] = None,
) -> TaskAccepted:
    """Queue a generation task for one of the key's projects."""
    if idempotency_key is not None and not idempotency.valid_key(idempotency_key):
        raise ApiError(
            400,
            f"{idempotency.HEADER}: must be 1-{idempotency.MAX_KEY_LENGTH} printable ASCII "
            "characters, without leading or trailing spaces",
            code="validation_error",
            field=idempotency.HEADER,
        )
    if json_size(body.metadata) > settings.max_metadata_bytes:
        raise ApiError(
            400,
            f"metadata: larger than {settings.max_metadata_bytes} bytes as JSON",
            code="validation_error",
            field="metadata",
        )
    if not caller.covers(body.project_id):
        raise ApiError(
            403,
            f"project_id: this API key does not cover project {body.project_id!r}",
            field="project_id",
        )
    if body.callback_url is not None:
        try:
            check_url_static(
                body.callback_url, Allowlist.parse(settings.url_allowlist), "callback_url"
            )
        except FetchError as exc:
            raise ApiError(400, str(exc), code="validation_error", field="callback_url") from exc
    claim = None
    if idempotency_key is not None:
        claim = limits.claim_for(
            idempotency_key, body.model_dump(mode="json"), settings.idempotency_ttl_hours
        )
    admission = limits.Admission.from_settings(settings, now, claim)
    empty.check(body.project_id, admission)
    try:
        admitted = dispatcher.submit(body.to_new_task(), admission)
    except limits.RateLimited as refused:
        empty.remember(body.project_id, admission, refused)
        raise
    row = admitted.row
    response.headers["Location"] = f"/api/v1/tasks/{row['task_id']}/status"
    if admitted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return TaskAccepted.from_row(row, admitted.queue_position)


@router.get("/{task_id}/status", response_model=TaskStatus)
def task_status(
    task_id: str, caller: CallerDep, pool: PoolDep, dispatcher: DispatcherDep
) -> TaskStatus:
    """A task's status, progress and result."""
    row = visible_task(pool, caller, task_id)
    if row["status"] in store.OPEN:
        row = dispatcher.status(row)
    return TaskStatus.from_row(row)


@router.delete("/{task_id}/cancel", response_model=TaskStatus)
def cancel_task(
    task_id: str, caller: CallerDep, pool: PoolDep, dispatcher: DispatcherDep
) -> TaskStatus:
    """Cancel a queued or processing task (409 once completed or failed)."""
    row = visible_task(pool, caller, task_id)
    return TaskStatus.from_row(dispatcher.cancel(row))


@router.post("/{task_id}/retry", status_code=202, response_model=TaskStatus)
def retry_task(
    task_id: str, caller: CallerDep, pool: PoolDep, dispatcher: DispatcherDep
) -> TaskStatus:
    """Re-run a failed task under the same task id (409 unless failed)."""
    row = visible_task(pool, caller, task_id)
    return TaskStatus.from_row(dispatcher.retry(row))
