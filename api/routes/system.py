"""System routes: health and workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CallerDep, DispatcherDep
from api.errors import ERROR_RESPONSES
from api.schemas import Health, HealthState, WorkerInfo, WorkersStatus
from moviegen_dagster import dispatch

router = APIRouter(prefix="/api/v1", tags=["system"], responses=ERROR_RESPONSES)

# Worker states that count as alive for `active_workers`.
ALIVE_WORKER_STATES = frozenset({"idle", "busy"})


def overall_health(components: Mapping[str, str]) -> HealthState:
    """Unhealthy when the database is down (nothing can be accepted); degraded when anything is."""
    if components.get("database", "unhealthy") == "unhealthy":
        return "unhealthy"
    if all(state == "healthy" for state in components.values()):
        return "healthy"
    return "degraded"


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is down."}},
)
def health(dispatcher: DispatcherDep) -> JSONResponse:
    """Service health (no key needed): 200 while tasks can be accepted, 503 when they cannot."""
    try:
        reported = dispatcher.health()
    except (dispatch.Unavailable, psycopg.OperationalError):
        # The health check is the one place where "unavailable" is an answer, not an error.
        reported = {"database": "unhealthy"}
    status = overall_health(reported)
    body = Health.model_validate({"status": status, "components": reported})
    return JSONResponse(
        body.model_dump(mode="json"), status_code=503 if status == "unhealthy" else 200
    )


@router.get("/workers/status", response_model=WorkersStatus)
def workers_status(caller: CallerDep, dispatcher: DispatcherDep) -> WorkersStatus:
    """GPU workers, their load and current task (shown only for the caller's projects)."""
    workers: list[WorkerInfo] = []
    for row in dispatcher.workers():
        project = row.get("project_id_of_current_task")
        visible = caller.is_admin or (project is not None and caller.covers(project))
        workers.append(_worker(row, row.get("current_task_id") if visible else None))
    loads = [w.gpu_utilization for w in workers if w.gpu_utilization is not None]
    return WorkersStatus(
        workers=workers,
        total_workers=len(workers),
        active_workers=sum(1 for w in workers if w.status in ALIVE_WORKER_STATES),
        gpu_utilization=round(sum(loads) / len(loads), 4) if loads else None,
    )


def _worker(row: dict[str, Any], current_task_id: Any) -> WorkerInfo:
    return WorkerInfo(
        worker_id=row["worker_id"],
        worker_type=row["worker_type"],
        status=row["status"],
        current_task_id=current_task_id,
        gpu_utilization=row.get("gpu_utilization"),
        memory_usage=row.get("memory_usage"),
        tasks_completed=row["tasks_completed"],
        last_heartbeat=row["last_heartbeat"],
    )
