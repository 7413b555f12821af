"""The application as a whole: routes, OpenAPI text, imports, and the real dispatcher's wiring."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error, submission
from fastapi.testclient import TestClient

from api.main import create_app
from moviegen_dagster import keys
from moviegen_dagster.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROUTES = {
    ("POST", "/api/v1/tasks/submit"),
    ("GET", "/api/v1/tasks/{task_id}/status"),
    ("DELETE", "/api/v1/tasks/{task_id}/cancel"),
    ("POST", "/api/v1/tasks/{task_id}/retry"),
    ("GET", "/api/v1/projects/{project_id}/tasks"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/workers/status"),
    ("GET", "/media/{key}"),
    ("GET", "/api/v1/tasks/{task_id}/events"),
    ("GET", "/api/v1/tasks/{task_id}/preview"),
    ("POST", "/api/v1/projects/{project_id}/backfills"),
    ("GET", "/api/v1/projects/{project_id}/backfills"),
    ("GET", "/api/v1/projects/{project_id}/backfills/{backfill_id}"),
    ("GET", "/metrics"),
}


def test_route_list(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert routes == ROUTES


def test_openapi_text(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "MovieGen Task Service"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            # Docstrings become the operation text; no route advertises FastAPI's 422.
            assert operation.get("description"), (method, path)
            assert "422" not in operation["responses"], (method, path)
    submit = spec["paths"]["/api/v1/tasks/submit"]["post"]
    assert "202" in submit["responses"]
    assert "4XX" in submit["responses"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/nope"), ("GET", "/"), ("POST", "/api/v1/tasks")]
)
def test_unknown_routes_are_404_in_the_shape(client: TestClient, method: str, path: str) -> None:
    assert_error(client.request(method, path), 404, "not_found")


def test_no_heavy_imports() -> None:
    """The API process stays small: no torch, diffusers, transformers or dagster at import."""
    code = (
        "import sys, api.main, api.routes.media; "
        "heavy = {'torch', 'diffusers', 'transformers', 'dagster'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def real_app_client(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app building its own dispatch.Dispatcher, with no Dagster webserver to launch on."""
    if not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    # A throwaway Dagster home, so the launch attempt touches no real instance.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    real = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:6379/15", "dagster_port": port}
    )
    with TestClient(create_app(real)) as test_client:
        yield test_client


def test_real_dispatcher_wiring(real_app_client: TestClient, conn: Any) -> None:
    client = real_app_client
    health = client.get("/api/v1/health")
    assert health.status_code == 200
    assert health.json()["components"]["database"] == "healthy"
    raw = keys.new_key()
    keys.store_key(conn, raw, "wiring", "proj_wiring")
    headers = {"X-API-Key": raw}
    # The fast-path launch fails (no webserver); the task is accepted all the same.
    accepted = client.post("/api/v1/tasks/submit", json=submission("proj_wiring"), headers=headers)
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    status = client.get(f"/api/v1/tasks/{task_id}/status", headers=headers)
    assert status.json()["status"] == "queued"
    cancelled = client.delete(f"/api/v1/tasks/{task_id}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    workers = client.get("/api/v1/workers/status", headers=headers)
    assert workers.status_code == 200


@pytest.mark.parametrize(
    ("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc")]
)
def test_docs_pages_need_no_cdn(client: TestClient, page: str, asset: str) -> None:
    """The docs pages load their scripts from the API itself (air-gapped hosts, CI)."""
    html = client.get(page).text
    assert "cdn." not in html and "googleapis" not in html
    src = next(part.split('"')[0] for part in html.split('src="')[1:] if asset in part)
    assert src.startswith("/docs-static/")
    script = client.get(src)
    assert script.status_code == 200 and len(script.content) > 100_000
