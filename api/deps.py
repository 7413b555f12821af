"""The `Annotated` dependencies routes declare: settings, database pool, dispatcher, caller."""

from __future__ import annotations

import email.message
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from api.errors import ApiError
from moviegen_dagster import keys, limits, store
from moviegen_dagster.db import DictPool
from moviegen_dagster.keys import Caller
from moviegen_dagster.settings import Settings

API_KEY_HEADER = "X-API-Key"
# Query parameters that look like a credential: keys in URLs end up in logs and histories.
_KEY_QUERY_PARAMS = {"api_key", "apikey", "api-key", "x-api-key", "x_api_key", "key", "token"}


class TaskDispatcher(Protocol):
    """What the API needs from the Dagster side (moviegen_dagster.dispatch.Dispatcher)."""

    def submit(
        self, new: store.NewTask, admission: limits.Admission | None = None
    ) -> limits.Admitted:
        """Admit and commit the task (queued), then launch its run; launch failures are left
        to a sensor. Raises IdempotencyConflict, RateLimited or QueueFull when refused."""
        ...

    def status(self, row: store.Row) -> store.Row:
        """The row refreshed from its run's state."""
        ...

    def cancel(self, row: store.Row) -> store.Row:
        """Cancel; raises dispatch.Conflict for completed or failed tasks."""
        ...

    def retry(self, row: store.Row) -> store.Row:
        """Re-execute a failed task under the same id; raises dispatch.Conflict otherwise."""
        ...

    def health(self) -> dict[str, str]:
        """Component name -> healthy | degraded | unhealthy."""
        ...

    def workers(self) -> list[dict[str, Any]]:
        """Rows of moviegen.workers with the current task's project."""
        ...

    def graphql(self, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
        """A query or mutation against Dagster's GraphQL API (backfills are launched so)."""
        ...


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_pool(request: Request) -> DictPool:
    """The app's psycopg pool; routes hold a connection only for their own queries."""
    pool: DictPool = request.app.state.pool
    return pool


def get_dispatcher(request: Request) -> TaskDispatcher:
    """The dispatcher to Dagster."""
    dispatcher: TaskDispatcher = request.app.state.dispatcher
    return dispatcher


def get_empty_buckets(request: Request) -> limits.EmptyBuckets:
    """This API process's memory of rate-limit buckets it saw empty."""
    buckets: limits.EmptyBuckets = request.app.state.empty_buckets
    return buckets


def get_now() -> datetime:
    """The current time for expiry and rate limits (tests override this dependency)."""
    return datetime.now(UTC)


SettingsDep = Annotated[Settings, Depends(get_settings)]
NowDep = Annotated[datetime, Depends(get_now)]
PoolDep = Annotated[DictPool, Depends(get_pool)]
DispatcherDep = Annotated[TaskDispatcher, Depends(get_dispatcher)]
EmptyBucketsDep = Annotated[limits.EmptyBuckets, Depends(get_empty_buckets)]

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="A project key covers one project; an admin key covers every project.",
)


def require_key(
    request: Request,
    pool: PoolDep,
    raw_key: Annotated[str | None, Security(_api_key_header)],
) -> Caller:
    """The caller behind the X-API-Key header; 401 when missing, unknown, revoked or expired."""
    if any(name.lower() in _KEY_QUERY_PARAMS for name in request.query_params):
        raise ApiError(
            401, f"API keys are accepted only in the {API_KEY_HEADER} header", field=API_KEY_HEADER
        )
    if not raw_key:
        raise ApiError(401, f"missing {API_KEY_HEADER} header", field=API_KEY_HEADER)
    # A short checkout of its own: the pool is shared with the dispatcher, and holding one
    # connection per request while the dispatcher takes another could exhaust it under load.
    with pool.connection() as conn:
        caller = keys.authenticate(conn, raw_key)
    if caller is None:
        # One answer for unknown, revoked and expired keys.
        raise ApiError(401, "invalid API key", field=API_KEY_HEADER)
    return caller


CallerDep = Annotated[Caller, Depends(require_key)]


def visible_projects(caller: Caller) -> list[str] | None:
    """The project scope store queries take (None: admin, every project)."""
    return None if caller.project_id is None else [caller.project_id]


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (`application/json` or `application/*+json`).

    415 rather than 400: the body may be fine, only its declared media type is not one this
    route reads; FastAPI would otherwise hand a text/plain body to validation as raw bytes.
    """
    content_type = request.headers.get("content-type")
    if content_type:
        message = email.message.Message()
        message["content-type"] = content_type
        subtype = message.get_content_subtype()
        if message.get_content_maintype() == "application" and (
            subtype == "json" or subtype.endswith("+json")
        ):
            return
    raise ApiError(415, "Content-Type must be application/json", field="Content-Type")
