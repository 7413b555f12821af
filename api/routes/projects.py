"""Project routes: the paginated task listing."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BeforeValidator

from api.deps import CallerDep, PoolDep
from api.errors import ERROR_RESPONSES, ApiError
from api.schemas import ID_PATTERN, TaskListItem, TaskPage, TaskState, TaskType
from moviegen_dagster import store

router = APIRouter(prefix="/api/v1/projects", tags=["projects"], responses=ERROR_RESPONSES)

MAX_LIMIT = 100
# Keeps OFFSET = (page - 1) * limit far inside PostgreSQL's bigint.
MAX_PAGE = 1_000_000


def _blank_is_none(value: Any) -> Any:
    """`?status=` (as forms and the contract's examples send it) means no filter."""
    return None if value == "" else value


@router.get("/{project_id}/tasks", response_model=TaskPage)
def list_project_tasks(
    project_id: Annotated[str, Path(pattern=ID_PATTERN)],
    caller: CallerDep,
    pool: PoolDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    status: Annotated[TaskState | None, BeforeValidator(_blank_is_none), Query()] = None,
    task_type: Annotated[TaskType | None, BeforeValidator(_blank_is_none), Query()] = None,
) -> TaskPage:
    """A project's tasks, newest first, optionally filtered by status and task type."""
    if not caller.covers(project_id):
        raise ApiError(
            403,
            f"project_id: this API key does not cover project {project_id!r}",
            field="project_id",
        )
    with pool.connection() as conn:
        rows, total = store.list_tasks(conn, project_id, status, task_type, page, limit)
    return TaskPage(
        project_id=project_id,
        tasks=[TaskListItem.from_row(row) for row in rows],
        page=page,
        limit=limit,
        total=total,
        pages=math.ceil(total / limit),
    )
