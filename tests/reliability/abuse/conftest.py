"""Fixtures of the abuse suite: the API on a throwaway database (fast path), extra projects on
the shared running stack, the API process of that stack, and helpers to compare answers."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from moviegen_dagster import db, keys
from moviegen_dagster.settings import Settings

# The API contract tests' helpers and store-only dispatcher are reused, not copied.
_API_TESTS = Path(__file__).resolve().parents[2] / "api"
if str(_API_TESTS) not in sys.path:
    sys.path.insert(0, str(_API_TESTS))

from api_helpers import Project  # noqa: E402

from tests.api.conftest import StoreOnlyDispatcher  # noqa: E402
from tests.pg_support import throwaway_database  # noqa: E402

ADMIN_KEY = "mg_abuse_admin_" + secrets.token_hex(8)

# Headers that legitimately differ between two identical answers.
VOLATILE_HEADERS = frozenset(
    {"date", "server", "x-request-id", "x-correlation-id", "traceparent", "x-process-time"}
)


def new_project(conn: psycopg.Connection[Any], prefix: str = "abuse") -> Project:
    """Store a key for a fresh project id (the project exists once it has a key)."""
    project_id = f"{prefix}_{secrets.token_hex(5)}"
    raw = keys.new_key()
    keys.store_key(conn, raw, f"test:{project_id}", project_id)
    return Project(project_id, raw)


def answer(resp: Any) -> tuple[int, bytes, dict[str, str]]:
    """What a client can observe of a response: status, exact body, stable headers."""
    headers = {
        k.lower(): v
        for k, v in resp.headers.items()
        if k.lower() not in VOLATILE_HEADERS
        and not k.lower().startswith(("ratelimit", "x-ratelimit"))
    }
    return resp.status_code, resp.content, headers


# 0 switches the per-project submit rate limit and queue cap off.
LIMITS_OFF: dict[str, Any] = {
    "MOVIEGEN_SUBMIT_RATE_PER_MINUTE": 0,
    "MOVIEGEN_MAX_QUEUED_PER_PROJECT": 0,
}


@pytest.fixture(scope="module")
def abuse_db() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards (the app migrates it)."""
    with throwaway_database("mg_abuse", migrate=False) as url:
        yield url


@pytest.fixture(scope="module")
def abuse_media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local media store root of the fast-path app."""
    return tmp_path_factory.mktemp("abuse-media")


@pytest.fixture(scope="module")
def abuse_settings(
    abuse_db: str, abuse_media_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of the fast-path app (submit limits lifted: the tests submit hundreds)."""
    return Settings(  # type: ignore[call-arg]
        MOVIEGEN_HOME=tmp_path_factory.mktemp("abuse-home"),
        DATABASE_URL=abuse_db,
        MOVIEGEN_ADMIN_KEY=SecretStr(ADMIN_KEY),
        MOVIEGEN_MEDIA_DIR=abuse_media_root,
        **LIMITS_OFF,
    )


@pytest.fixture(scope="module")
def abuse_dispatcher(abuse_db: str) -> Iterator[StoreOnlyDispatcher]:
    """Stores tasks and never runs them (no Dagster: the HTTP contract only)."""
    pool = db.make_pool(abuse_db, max_size=4, name="abuse-dispatcher")
    try:
        yield StoreOnlyDispatcher(pool)  # type: ignore[arg-type]  # dict_row pool, as in tests/api
    finally:
        pool.close()


@pytest.fixture(scope="module")
def abuse_client(
    abuse_settings: Settings, abuse_dispatcher: StoreOnlyDispatcher
) -> Iterator[TestClient]:
    """The real app on the throwaway database (lifespan: migrate, pool, seed keys)."""
    from api.main import create_app

    with TestClient(create_app(abuse_settings, dispatcher=abuse_dispatcher)) as client:
        yield client


@pytest.fixture
def abuse_conn(abuse_client: TestClient, abuse_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A direct autocommit connection to the fast-path database (after migration)."""
    with psycopg.connect(abuse_db, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


@pytest.fixture
def stack_conn(running_stack: Any) -> Iterator[psycopg.Connection[Any]]:
    """A direct autocommit connection to the shared stack's database."""
    url = running_stack.env["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


@pytest.fixture
def stack_project(stack_conn: psycopg.Connection[Any]) -> Project:
    """A project of its own on the shared stack (its own submit budget, its own listing)."""
    return new_project(stack_conn)


@pytest.fixture
def api_process(running_stack: Any) -> psutil.Process:
    """The stack's API server process (uvicorn), for memory measurements."""
    for name, proc in running_stack.stack.procs:
        if name == "api":
            return psutil.Process(proc.pid)
    raise AssertionError(f"no api process among {[n for n, _ in running_stack.stack.procs]}")
