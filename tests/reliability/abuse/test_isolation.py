"""Project isolation: another project's ids answer exactly like unknown ids, on every route.

Routes are discovered from the app's OpenAPI document, so a route added later with a
`{task_id}`, `{project_id}` or `{backfill_id}` path parameter is covered without touching this
file; a route with a path parameter this file has no rule for (RESOURCE_FACTORIES) fails the
test until one is added.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from tests.conftest import AssetServer, RunningStack, poll
from tests.reliability.abuse.conftest import ADMIN_KEY, Project, answer, new_project

pytestmark = pytest.mark.reliability

SEED = 20261126
N_PROJECTS = 5
N_TASKS = 240


def _dry_run_backfill(client: Any, project: Project) -> str:
    """A backfill of the project that plans only (launches nothing, also on a real stack)."""
    resp = client.post(
        f"/api/v1/projects/{project.project_id}/backfills",
        json={"dry_run": True},
        headers=project.headers,
    )
    assert resp.status_code in (200, 202), resp.text
    return str(resp.json()["backfill_id"])


# Path parameters naming a project-owned resource other than a task, and how a project makes
# one (over the API). `task_id` and `project_id` are built in; any other parameter must get a
# rule here, so a new route cannot slip past the sweep.
RESOURCE_FACTORIES: dict[str, Callable[[Any, Project], str]] = {
    "backfill_id": _dry_run_backfill,
}
ID_PARAMS = ("task_id", "project_id", *RESOURCE_FACTORIES)
# Routes that take no API key by design (the media key itself is the unguessable secret).
KEYLESS = ("/media/{key}",)


@dataclass
class Route:
    """One authenticated operation with path parameters."""

    method: str
    path: str
    params: list[str]
    has_body: bool


@dataclass
class World:
    """Projects, their tasks, and where each task lives."""

    projects: list[Project]
    tasks: dict[str, list[str]] = field(default_factory=dict)  # project_id -> task ids
    # parameter name -> project_id -> ids of that kind of resource
    resources: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # task id -> project_id


def discover_routes(openapi: dict[str, Any]) -> list[Route]:
    """Every operation that takes a key and an id-like path parameter."""
    routes: list[Route] = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            if not params:
                continue
            if not op.get("security"):
                assert path in KEYLESS, f"{method.upper()} {path} takes an id but no API key"
                continue
            unknown = [p for p in params if p not in ID_PARAMS]
            assert not unknown, (
                f"{method.upper()} {path}: no isolation rule for path parameter(s) {unknown}; "
                "add one to tests/reliability/abuse/test_isolation.py"
            )
            routes.append(Route(method.upper(), path, params, "requestBody" in op))
    return routes


def unknown_project_like(project_id: str) -> str:
    """A never-used project id of the same length (so answers can be compared byte for byte)."""
    prefix = project_id.rsplit("_", 1)[0]
    tail = len(project_id) - len(prefix) - 1
    return f"{prefix}_{secrets.token_hex(tail)[:tail]}"


def fill(route: Route, values: dict[str, str]) -> str:
    """The route's path with its parameters filled in."""
    path = route.path
    for name in route.params:
        path = path.replace("{" + name + "}", values[name])
    return path


def call(client: Any, route: Route, path: str, headers: dict[str, str]) -> Any:
    """Make the call without waiting on a stream: an event stream that opened by mistake is
    read for one chunk only (and then fails the comparison)."""
    kwargs: dict[str, Any] = {"headers": headers}
    if route.has_body:
        kwargs["json"] = {}
    with client.stream(route.method, path, **kwargs) as resp:
        if resp.status_code < 300 and "text/event-stream" in resp.headers.get("content-type", ""):
            next(resp.iter_bytes(), b"")
            return httpx.Response(resp.status_code, headers=resp.headers, content=b"<stream>")
        resp.read()
        return resp


def make_resources(client: Any, world: World, per_project: int) -> None:
    """Resources of every registered kind for every project, made over the API."""
    for param, factory in RESOURCE_FACTORIES.items():
        world.resources[param] = {
            p.project_id: [factory(client, p) for _ in range(per_project)] for p in world.projects
        }


def sweep(
    client: Any,
    routes: list[Route],
    world: World,
    rng: random.Random,
    pairs: int,
) -> int:
    """Call every route with another project's ids and with unknown ids; the answers must be
    identical. Routes that take a project id and another id are also called with the
    caller's own project id and the other project's resource id."""
    compared = 0
    for route in routes:
        nested = "project_id" in route.params and len(route.params) > 1
        for own_project in (False, True) if nested else (False,):
            for _ in range(pairs):
                caller, other = rng.sample(world.projects, 2)
                foreign: dict[str, str] = {"task_id": rng.choice(world.tasks[other.project_id])}
                unknown: dict[str, str] = {"task_id": str(uuid.uuid4())}
                for param, owned in world.resources.items():
                    foreign[param] = rng.choice(owned[other.project_id])
                    unknown[param] = str(uuid.uuid4())
                unknown_project = unknown_project_like(other.project_id)
                if own_project:
                    foreign["project_id"] = unknown["project_id"] = caller.project_id
                else:
                    foreign["project_id"] = other.project_id
                    unknown["project_id"] = unknown_project
                got_foreign = answer(call(client, route, fill(route, foreign), caller.headers))
                got_unknown = answer(call(client, route, fill(route, unknown), caller.headers))
                status, body, headers = got_foreign
                # The project id is echoed in messages; equal lengths keep every byte comparable.
                body = body.replace(other.project_id.encode(), unknown_project.encode())
                where = (route.method, route.path, "own project" if own_project else "foreign")
                assert (status, body, headers) == got_unknown, where
                assert 400 <= status < 500, (where, got_foreign)
                compared += 1
    return compared


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything a misdirected call could change."""
    tasks = conn.execute("SELECT * FROM moviegen.tasks ORDER BY task_id").fetchall()
    outbox = conn.execute("SELECT count(*) AS n FROM moviegen.webhook_outbox").fetchone()
    state: dict[str, Any] = {"tasks": tasks, "outbox": outbox}
    # Other project-owned tables, where this build has them.
    for table in ("backfills",):
        exists = conn.execute("SELECT to_regclass(%s) AS t", [f"moviegen.{table}"]).fetchone()
        if exists and exists["t"]:
            state[table] = conn.execute(f"SELECT * FROM moviegen.{table} ORDER BY 1").fetchall()
    return state


def list_all(client: Any, project_id: str, headers: dict[str, str], **query: str) -> list[Any]:
    """Every item of a project's listing, page by page."""
    items: list[Any] = []
    page = 1
    while True:
        resp = client.get(
            f"/api/v1/projects/{project_id}/tasks",
            params={"page": page, "limit": 100, **query},
            headers=headers,
        )
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        items.extend(doc["tasks"])
        if page >= doc["pages"]:
            return items
        page += 1


VIDEO = {"storyboard_images": ["https://example.com/f.jpg"], "scene_description": "A scene"}
IMAGE = {"character_description": "A detective"}
AUDIO = {"text": "Hello.", "character_voice_profile": "https://example.com/v.wav"}
BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "generate_video": (VIDEO, "scene_id"),
    "generate_image": (IMAGE, "character_id"),
    "process_audio": (AUDIO, "dialogue_id"),
}


def random_submission(rng: random.Random, project_id: str) -> dict[str, Any]:
    """A valid task of a random type, priority and subject."""
    task_type = rng.choice(sorted(BODIES))
    data, subject = BODIES[task_type]
    return {
        "project_id": project_id,
        "task_type": task_type,
        "task_data": data,
        "priority": rng.randint(1, 10),
        "metadata": {subject: f"s{rng.randint(0, 9)}"},
    }


# Statuses forced on some tasks so that cancel/retry on a foreign task would answer 409 or 202
# (not 404) if the scope were missing: the sweep would see the difference.
FORCED = ("completed", "failed", "cancelled", "processing")


@pytest.fixture(scope="module")
def world(abuse_client: TestClient, abuse_db: str) -> Iterator[World]:
    """N_TASKS tasks over N_PROJECTS projects, seeded random, some forced into other states."""
    rng = random.Random(SEED)
    with psycopg.connect(abuse_db, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        projects = [new_project(conn, prefix="iso") for _ in range(N_PROJECTS)]
        world = World(projects, {p.project_id: [] for p in projects})
        for _ in range(N_TASKS):
            project = rng.choice(projects)
            resp = abuse_client.post(
                "/api/v1/tasks/submit",
                json=random_submission(rng, project.project_id),
                headers=project.headers,
            )
            assert resp.status_code == 202, resp.text
            task_id = resp.json()["task_id"]
            world.tasks[project.project_id].append(task_id)
            world.owner[task_id] = project.project_id
        for task_id in rng.sample(sorted(world.owner), N_TASKS // 2):
            status = rng.choice(FORCED)
            conn.execute(
                "UPDATE moviegen.tasks SET status = %s, error = %s, run_id = %s, "
                "started_at = now(), completed_at = CASE WHEN %s THEN now() END "
                "WHERE task_id = %s",
                [
                    status,
                    Jsonb({"code": "x", "message": "boom"}) if status == "failed" else None,
                    f"run-{task_id}",
                    status != "processing",
                    task_id,
                ],
            )
        make_resources(abuse_client, world, per_project=2)
        # Workers busy with tasks of every project: /workers/status must hide the others'.
        busy = rng.sample(sorted(world.owner), 8)
        for i, task_id in enumerate(busy):
            conn.execute(
                "INSERT INTO moviegen.workers (worker_id, worker_type, hostname, pid, status, "
                "current_task_id) VALUES (%s, 'gpu_light', 'h', %s, 'busy', %s)",
                [f"iso-worker-{i}-{secrets.token_hex(3)}", 1000 + i, task_id],
            )
        yield world
        conn.execute("DELETE FROM moviegen.workers WHERE worker_id LIKE 'iso-worker-%'")


def test_openapi_routes_answer_foreign_ids_like_unknown_ids(
    abuse_client: TestClient, abuse_db: str, world: World
) -> None:
    """≥200 tasks over 5 projects: every id-taking route, foreign vs unknown, byte-identical."""
    routes = discover_routes(abuse_client.app.openapi())  # type: ignore[attr-defined]
    names = {(r.method, r.path) for r in routes}
    # The contract's routes are found (the discovery itself can fail).
    assert ("GET", "/api/v1/tasks/{task_id}/status") in names
    assert ("DELETE", "/api/v1/tasks/{task_id}/cancel") in names
    assert ("POST", "/api/v1/tasks/{task_id}/retry") in names
    assert ("GET", "/api/v1/projects/{project_id}/tasks") in names
    with psycopg.connect(abuse_db, row_factory=psycopg.rows.dict_row) as conn:
        before = snapshot(conn)
    compared = sweep(abuse_client, routes, world, random.Random(SEED + 1), pairs=25)
    with psycopg.connect(abuse_db, row_factory=psycopg.rows.dict_row) as conn:
        after = snapshot(conn)
    assert compared >= 25 * len(routes)
    assert after == before, "a call with another project's key changed stored state"


def test_listings_hold_exactly_the_callers_tasks(abuse_client: TestClient, world: World) -> None:
    """Each key lists exactly its project's tasks (filters included); admin sees the same."""
    admin = {"X-API-Key": ADMIN_KEY}
    for project in world.projects:
        mine = set(world.tasks[project.project_id])
        listed = list_all(abuse_client, project.project_id, project.headers)
        assert {t["task_id"] for t in listed} == mine
        assert {t["project_id"] for t in listed} == {project.project_id}
        as_admin = list_all(abuse_client, project.project_id, admin)
        assert {t["task_id"] for t in as_admin} == mine
        for status in ("queued", *FORCED):
            filtered = list_all(abuse_client, project.project_id, project.headers, status=status)
            assert {t["task_id"] for t in filtered} <= mine
            assert all(t["status"] == status for t in filtered)


def test_workers_status_shows_only_the_callers_current_tasks(
    abuse_client: TestClient, world: World
) -> None:
    """A worker busy with another project's task shows no current_task_id to this key."""
    all_busy: set[str] = set()
    for project in world.projects:
        resp = abuse_client.get("/api/v1/workers/status", headers=project.headers)
        assert resp.status_code == 200, resp.text
        shown = {
            w["current_task_id"]
            for w in resp.json()["workers"]
            if w["worker_id"].startswith("iso-worker-") and w["current_task_id"]
        }
        assert all(world.owner[t] == project.project_id for t in shown), shown
        all_busy |= shown
    resp = abuse_client.get("/api/v1/workers/status", headers={"X-API-Key": ADMIN_KEY})
    admin_view = {
        w["current_task_id"]
        for w in resp.json()["workers"]
        if w["worker_id"].startswith("iso-worker-")
    }
    # Every busy task is shown to its own project: hiding is per caller, not blanket.
    assert all_busy == admin_view and len(admin_view) == 8


def _submit_failing(client: httpx.Client, project: Project, missing: str) -> str:
    """An image task whose reference input 404s: it fails fast, before any model loads."""
    resp = client.post(
        "/api/v1/tasks/submit",
        json={
            "project_id": project.project_id,
            "task_type": "generate_image",
            "task_data": {
                "character_description": "A detective",
                "reference_images": [missing],
                "resolution": "64x64",
            },
        },
        headers=project.headers,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def test_running_api_answers_foreign_ids_like_unknown_ids(
    running_stack: RunningStack,
    stack_conn: psycopg.Connection[Any],
    asset_server: AssetServer,
) -> None:
    """The real API process over HTTP: failed foreign tasks (retry would answer 202, cancel 409
    if the scope were missing) and listings, on the routes the running API documents."""
    projects = [new_project(stack_conn, prefix="isostack") for _ in range(3)]
    world = World(projects, {p.project_id: [] for p in projects})
    with httpx.Client(base_url=running_stack.api_url, timeout=30) as client:
        for project in projects:
            for _ in range(2):
                task_id = _submit_failing(client, project, f"{asset_server.url}/iso-missing.jpg")
                world.tasks[project.project_id].append(task_id)
                world.owner[task_id] = project.project_id

        def all_failed() -> bool:
            return all(
                client.get(f"/api/v1/tasks/{t}/status", headers=p.headers).json()["status"]
                == "failed"
                for p in projects
                for t in world.tasks[p.project_id]
            )

        poll(all_failed, timeout=120, interval=0.5)
        make_resources(client, world, per_project=1)
        routes = discover_routes(client.get("/openapi.json").json())
        rows_before = _rows(stack_conn, world)
        sweep(client, routes, world, random.Random(SEED + 2), pairs=4)
        assert _rows(stack_conn, world) == rows_before
        for project in projects:
            listed = list_all(client, project.project_id, project.headers)
            assert {t["task_id"] for t in listed} == set(world.tasks[project.project_id])


def _rows(conn: psycopg.Connection[Any], world: World) -> list[Any]:
    ids = sorted(world.owner)
    return conn.execute(
        "SELECT task_id, status, attempt, run_id, updated_at FROM moviegen.tasks "
        "WHERE task_id = ANY(%s::uuid[]) ORDER BY task_id",
        [ids],
    ).fetchall()
