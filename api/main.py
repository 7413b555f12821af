"""The FastAPI application: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api import errors
from api.deps import TaskDispatcher
from api.middleware import BodyLimitMiddleware, TaskLogContextMiddleware
from api.routes import backfills, events, media, metrics, projects, system, tasks
from moviegen_dagster import db, keys, limits
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
        # The docs pages load their scripts from the API itself (below), never from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.empty_buckets = limits.EmptyBuckets()
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(TaskLogContextMiddleware)
    for module in (tasks, events, projects, backfills, system, media, metrics):
        app.include_router(module.router)
    _serve_docs(app)
    return app


# Swagger UI 5 and ReDoc, as packaged by fastapi-offline: the docs work without internet access.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_STATIC = "/docs-static"


def _serve_docs(app: FastAPI) -> None:
    """Interactive API docs at /docs (Swagger UI) and /redoc, with locally served assets."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - API docs",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - API reference",
            redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
