"""`GET /metrics`: Prometheus text format, read from PostgreSQL at scrape time."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import PoolDep, SettingsDep
from api.errors import ApiError
from moviegen_dagster import metrics

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text exposition.", "content": {"text/plain": {}}},
        404: {"description": "Metrics are switched off (MOVIEGEN_METRICS_ENABLED=0)."},
    },
)
def prometheus_metrics(pool: PoolDep, settings: SettingsDep) -> Response:
    """Queue, task outcome, worker and webhook metrics (no key; aggregate labels only)."""
    if not settings.metrics_enabled:
        raise ApiError(404, "not found")
    with pool.connection() as conn:
        body = metrics.exposition(conn, settings.worker_dead_after_seconds)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
