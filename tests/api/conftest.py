"""Shared fixtures: a throwaway PostgreSQL database, the app on it, keys and projects."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from api_helpers import (
    ADMIN_KEY,
    MAX_BODY_BYTES,
    MAX_METADATA_BYTES,
    SEEDED_KEY,
    SEEDED_PROJECT,
    Project,
    make_project,
)
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from api.deps import get_now
from api.main import create_app
from moviegen_dagster import db, dispatch, limits, store
from moviegen_dagster.settings import Settings
from tests.pg_support import throwaway_database


class StoreOnlyDispatcher:
    """Test double of dispatch.Dispatcher that stores tasks and never runs them.

    It implements the interface on the store alone (no Dagster, no broker), so these tests
    cover the HTTP contract and not execution. `fail_with` makes the next call raise.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.fail_with: BaseException | None = None
        self.health_override: dict[str, str] = {}

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    def submit(
        self, new: store.NewTask, admission: limits.Admission | None = None
    ) -> limits.Admitted:
        """Admit and store the task as queued (one transaction, as the real one), without a run."""
        self._maybe_fail()
        with self.pool.connection() as conn:
            units = store.work_units(new.task_type, new.task_data)
            estimated = store.estimate_duration(conn, new.task_type, units)
            return limits.admit_and_insert(conn, new, estimated, admission)

    def status(self, row: store.Row) -> store.Row:
        """Nothing runs, so the stored row is the state."""
        self._maybe_fail()
        return row

    def cancel(self, row: store.Row) -> store.Row:
        """Cancel through the store; 409 semantics as the real dispatcher."""
        self._maybe_fail()
        with self.pool.connection() as conn:
            locked = store.get_task(conn, row["task_id"], None, for_update=True)
            assert locked is not None
            if locked["status"] == "cancelled":
                return locked
            if locked["status"] in ("completed", "failed"):
                raise dispatch.Conflict(f"task is already {locked['status']}")
            if locked["run_id"] is None:
                return store.cancel_unlaunched(conn, locked["task_id"]) or locked
            new = store.apply_run_state(
                conn, locked["task_id"], locked["run_id"], "cancelled", locked["attempt"], None
            )
            return new or locked

    def retry(self, row: store.Row) -> store.Row:
        """Reopen a failed task (same id, attempt + 1)."""
        self._maybe_fail()
        with self.pool.connection() as conn:
            reopened = store.reopen_for_retry(conn, row["task_id"])
        if reopened is None:
            raise dispatch.Conflict(
                f"only failed tasks can be retried; this one is {row['status']}"
            )
        return reopened

    def graphql(self, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
        """No Dagster here: whatever needs it fails as with the webserver down."""
        raise dispatch.Unavailable("no Dagster webserver in store-only tests")

    def health(self) -> dict[str, str]:
        """The database for real; other components as a test sets them."""
        self._maybe_fail()
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            database = "healthy"
        except psycopg.OperationalError:
            database = "unhealthy"
        return {"database": database, **self.health_override}

    def workers(self) -> list[dict[str, Any]]:
        """moviegen.workers with the project of each current task."""
        self._maybe_fail()
        with self.pool.connection() as conn:
            rows: list[dict[str, Any]] = conn.execute(  # type: ignore[assignment]  # dict_row pool
                """
                SELECT w.worker_id, w.worker_type, w.status, w.current_task_id,
                       t.project_id AS project_id_of_current_task, w.gpu_utilization,
                       w.memory_usage, w.tasks_completed, w.last_heartbeat
                FROM moviegen.workers w
                LEFT JOIN moviegen.tasks t ON t.task_id = w.current_task_id
                ORDER BY w.worker_id
                """
            ).fetchall()
        return rows


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end (the app migrates it)."""
    with throwaway_database("mg_test", migrate=False) as url:
        yield url


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local media store root."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def settings(
    database_url: str, media_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings for the app under test (small limits so the limit tests stay small)."""
    return Settings(
        MOVIEGEN_HOME=tmp_path_factory.mktemp("home"),
        DATABASE_URL=database_url,
        MOVIEGEN_API_KEYS=SecretStr(f"{SEEDED_KEY}:{SEEDED_PROJECT}"),
        MOVIEGEN_ADMIN_KEY=SecretStr(ADMIN_KEY),
        MOVIEGEN_MEDIA_DIR=media_root,
        MOVIEGEN_MAX_BODY_BYTES=MAX_BODY_BYTES,
        MOVIEGEN_MAX_METADATA_BYTES=MAX_METADATA_BYTES,
    )


@pytest.fixture(scope="session")
def dispatcher(database_url: str) -> Iterator[StoreOnlyDispatcher]:
    """The store-only dispatcher, on its own pool (the app opens another)."""
    pool = db.make_pool(database_url, max_size=4, name="test-dispatcher")
    try:
        yield StoreOnlyDispatcher(pool)
    finally:
        pool.close()


@pytest.fixture(scope="session")
def client(settings: Settings, dispatcher: StoreOnlyDispatcher) -> Iterator[TestClient]:
    """The app, started once (lifespan: migrate, pool, seed keys)."""
    with TestClient(create_app(settings, dispatcher=dispatcher)) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _reset_dispatcher(dispatcher: StoreOnlyDispatcher) -> Iterator[None]:
    yield
    dispatcher.fail_with = None
    dispatcher.health_override = {}


@pytest.fixture
def conn(client: TestClient, database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A direct connection for arranging state (autocommit; depends on the migrated app)."""
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as c:
        yield c


@pytest.fixture
def project(conn: psycopg.Connection[Any]) -> Project:
    """A fresh project and its key."""
    return make_project(conn)


@pytest.fixture
def other_project(conn: psycopg.Connection[Any]) -> Project:
    """A second fresh project, for isolation tests."""
    return make_project(conn)


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """Headers with the seeded admin key."""
    return {"X-API-Key": ADMIN_KEY}


class Clock:
    """The time the app sees through its `get_now` dependency; tests move it by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def advance(self, **delta: float) -> datetime:
        """Move forward by a timedelta's keyword arguments; returns the new time."""
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(client: TestClient) -> Iterator[Clock]:
    """An injected clock for expiry and rate limits (no sleeping), removed afterwards."""
    fixed = Clock(datetime(2031, 1, 1, 12, 0, tzinfo=UTC))
    app: Any = client.app
    app.dependency_overrides[get_now] = lambda: fixed.now
    try:
        yield fixed
    finally:
        app.dependency_overrides.pop(get_now, None)


@pytest.fixture
def configure(client: TestClient) -> Iterator[Callable[..., Settings]]:
    """Change settings of the running app for one test (`configure(submit_burst=2)`)."""
    app: Any = client.app
    original: Settings = app.state.settings

    def apply(**updates: Any) -> Settings:
        changed = original.model_copy(update=updates)
        app.state.settings = changed
        return changed

    try:
        yield apply
    finally:
        app.state.settings = original
