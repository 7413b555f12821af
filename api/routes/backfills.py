"""Per-project backfills: re-materialize missing, failed or stale partitions of a project."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from api.backfill_schemas import (
    BackfillDetail,
    BackfillItem,
    BackfillPage,
    BackfillProgress,
    BackfillRequest,
    BackfillSummary,
    BackfillTask,
)
from api.deps import CallerDep, DispatcherDep, PoolDep, SettingsDep, require_json
from api.errors import ERROR_RESPONSES, ApiError
from api.schemas import ID_PATTERN
from moviegen_dagster import backfills, store
from moviegen_dagster.keys import Caller

router = APIRouter(prefix="/api/v1/projects", tags=["backfills"], responses=ERROR_RESPONSES)

# Unknown, malformed and other projects' backfill ids all get exactly this body.
BACKFILL_NOT_FOUND = "backfill not found"
MAX_LIMIT = 100
MAX_PAGE = 1_000_000

ProjectId = Annotated[str, Path(pattern=ID_PATTERN)]


def _require_project(caller: Caller, project_id: str) -> None:
    if not caller.covers(project_id):
        raise ApiError(
            403,
            f"project_id: this API key does not cover project {project_id!r}",
            field="project_id",
        )


def _detail(conn: Any, row: store.Row) -> BackfillDetail:
    prog = BackfillProgress(**backfills.progress(conn, row))
    return BackfillDetail(
        **BackfillSummary.fields_from_row(row, prog.model_dump()),
        items=[BackfillItem(**item) for item in row["plan"]],
        tasks=[BackfillTask(**t) for t in store.backfill_tasks(conn, row["backfill_id"])],
    )


@router.post(
    "/{project_id}/backfills",
    status_code=202,
    response_model=BackfillDetail,
    dependencies=[Depends(require_json)],
    responses={200: {"model": BackfillDetail, "description": "Dry run: the plan only."}},
)
def create_backfill(
    project_id: ProjectId,
    body: BackfillRequest,
    caller: CallerDep,
    pool: PoolDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    response: Response,
) -> BackfillDetail:
    """Plan the project's missing/failed/stale partitions and launch them (202), or plan (200)."""
    _require_project(caller, project_id)
    with pool.connection() as conn:
        row = backfills.request_backfill(
            conn, project_id, body.to_selection(), settings, "api", dispatcher.graphql
        )
        detail = _detail(conn, row)
    if row["status"] == "launch_failed":
        raise ApiError(
            503,
            f"backfill {row['backfill_id']} was planned but could not be launched; "
            "Dagster is unavailable, try again shortly",
            headers={"Retry-After": "5"},
        )
    if row["dry_run"] or row["status"] == "nothing_to_do":
        response.status_code = 200
    return detail


@router.get("/{project_id}/backfills", response_model=BackfillPage)
def list_backfills(
    project_id: ProjectId,
    caller: CallerDep,
    pool: PoolDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> BackfillPage:
    """The project's backfills, newest first, with their progress."""
    _require_project(caller, project_id)
    with pool.connection() as conn:
        rows, total = store.list_backfills(conn, project_id, page, limit)
        items = [
            BackfillSummary(**BackfillSummary.fields_from_row(r, backfills.progress(conn, r)))
            for r in rows
        ]
    return BackfillPage(
        project_id=project_id,
        backfills=items,
        page=page,
        limit=limit,
        total=total,
        pages=math.ceil(total / limit),
    )


@router.get("/{project_id}/backfills/{backfill_id}", response_model=BackfillDetail)
def get_backfill(
    project_id: ProjectId, backfill_id: str, caller: CallerDep, pool: PoolDep
) -> BackfillDetail:
    """A backfill's plan, the tasks it created and their progress."""
    _require_project(caller, project_id)
    with pool.connection() as conn:
        row = store.get_backfill(conn, project_id, backfill_id)
        if row is None:
            raise ApiError(404, BACKFILL_NOT_FOUND)
        return _detail(conn, row)
