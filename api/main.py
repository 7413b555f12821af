"""The FastAPI application: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api import errors
from api.deps import TaskDispatcher
from api.middleware import BodyLimitMiddleware
from api.routes import media, projects, system, tasks
from moviegen_dagster import db, keys
from moviegen_dagster.dispatch import Dispatcher
from moviegen_dagster.settings import Settings, get_settings

DESCRIPTION = """
Generation tasks (video, image, dialogue audio) for the AI movie platform, each executed as a
Dagster run on a GPU worker.

Authenticate with the `X-API-Key` header (never the query string). A project key covers one
project; another project's task answers exactly like an unknown one (404). Every error has the
shape `{"error": {"code": str, "message": str, "field": str | null}}`; invalid requests answer
400 naming the field.
"""


def _version() -> str:
    try:
        return version("moviegen")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def _start(app: FastAPI, settings: Settings, dispatcher: TaskDispatcher | None) -> None:
    """Migrate, open the pool, seed keys and build the dispatcher (blocking; run off the loop)."""
    url = settings.require_database_url()
    db.migrate(url)
    pool = db.make_pool(url, name="moviegen-api")
    try:
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        with pool.connection() as conn:
            keys.seed_keys(conn, settings.api_keys.get_secret_value(), admin)
        if dispatcher is None:
            built = Dispatcher(settings, pool)
            app.state.close_dispatcher = built.close
            dispatcher = built
    except BaseException:
        pool.close()
        raise
    app.state.pool = pool
    app.state.dispatcher = dispatcher


def create_app(
    settings: Settings | None = None, dispatcher: TaskDispatcher | None = None
) -> FastAPI:
    """Build the API; the dispatcher is made at start-up from the app's pool unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_start, app, settings, dispatcher)
        try:
            yield
        finally:
            close = getattr(app.state, "close_dispatcher", None)
            if close is not None:
                await run_in_threadpool(close)
            await run_in_threadpool(app.state.pool.close)

    app = FastAPI(
        title="MovieGen Task Service",
        description=DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    for module in (tasks, projects, system, media):
        app.include_router(module.router)
    return app
