"""Session-wide fixtures: one real MovieGen stack (embedded PostgreSQL and Redis, Dagster
webserver and daemon, Celery workers, the API) shared by every test that needs it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")

KEY_A = "test-key-project-a-0123456789"
KEY_B = "test-key-project-b-0123456789"
PROJECT_A = "project_a"
PROJECT_B = "project_b"


def poll(check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@dataclass
class RunningStack:
    """Handles tests need: URLs, keys, the Stack object (for fault injection) and its env."""

    stack: Any
    env: dict[str, str]
    api_url: str
    dagster_url: str
    admin_key: str

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        """An HTTP client for the API with the given key."""
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def instance(self) -> Any:
        """A Dagster instance on the stack's storage."""
        from dagster import DagsterInstance

        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        return DagsterInstance.get()

    def submit_image(
        self, client: httpx.Client, project: str = PROJECT_A, **overrides: Any
    ) -> dict[str, Any]:
        """Submit a small character image task and return the 202 body."""
        task_data = {
            "character_description": "Detective in 1920s noir style",
            "pose": "standing_confident",
            "lighting": "dramatic_shadow",
            "resolution": "256x256",
        }
        task_data.update(overrides.pop("task_data", {}))
        body = {
            "project_id": project,
            "task_type": "generate_image",
            "task_data": task_data,
            "metadata": {"character_id": "detective_main"},
            **overrides,
        }
        resp = client.post("/api/v1/tasks/submit", json=body)
        assert resp.status_code == 202, resp.text
        return dict(resp.json())

    def wait_terminal(self, client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
        """Poll a task's status until it is terminal; returns the final status document."""

        def done() -> dict | None:
            doc = client.get(f"/api/v1/tasks/{task_id}/status").json()
            return doc if doc["status"] in ("completed", "failed", "cancelled") else None

        return poll(done, timeout)


@contextmanager
def start_stack(home: Path, **overrides: str) -> Iterator[RunningStack]:
    """Start a whole stack, as `make up` does, with these settings; stop it afterwards."""
    from moviegen_dagster.settings import Settings
    from moviegen_dagster.stack import Stack, free_port

    settings_env = {
        "MOVIEGEN_HOME": str(home),
        "MOVIEGEN_API_PORT": str(free_port()),
        "MOVIEGEN_DAGSTER_PORT": str(free_port()),
        "MOVIEGEN_TORCH_THREADS": "1",
        **overrides,
    }
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_STATE}
    env.update(settings_env)
    settings = Settings(**settings_env)  # type: ignore[arg-type]
    stack = Stack(settings, env=env)
    try:
        started = stack.start()
        yield RunningStack(
            stack=stack,
            env=started,
            api_url=f"http://127.0.0.1:{settings.api_port}",
            dagster_url=settings.dagster_url,
            admin_key=started["MOVIEGEN_ADMIN_KEY"],
        )
    finally:
        stack.stop()


# Variables that belong to one stack and must not leak into another.
INHERITED_STATE = ("DATABASE_URL", "REDIS_URL", "DAGSTER_HOME", "MOVIEGEN_ADMIN_KEY")


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The stack most tests share: two image/audio slots, one video slot, faults armed."""
    with start_stack(
        tmp_path_factory.mktemp("stack"),
        MOVIEGEN_API_KEYS=f"{KEY_A}:{PROJECT_A},{KEY_B}:{PROJECT_B}",
        MOVIEGEN_WORKERS="gpu_heavy=1,gpu_light=2",
        MOVIEGEN_FAULT_INJECTION="1",
        MOVIEGEN_RECONCILE_AFTER_SECONDS="3",
        MOVIEGEN_DEQUEUE_INTERVAL_SECONDS="0",
        MOVIEGEN_WORKER_DEAD_AFTER_SECONDS="6",
        MOVIEGEN_URL_ALLOWLIST="127.0.0.1",
    ) as stack:
        yield stack


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (160, 90)) -> bytes:
    """A small solid-colour JPEG (storyboard frames, reference images)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def scene_task(frames: list[str], **task_data: Any) -> dict[str, Any]:
    """The quickstart's scenario 1 submission (a short scene by default), with overrides."""
    return {
        "project_id": PROJECT_A,
        "task_type": "generate_video",
        "task_data": {
            "storyboard_images": frames,
            "scene_description": "Detective enters the dark alley",
            "camera_angle": "wide_shot",
            "lighting": "noir_dramatic",
            "character_positions": ["detective_center"],
            "audio_cues": ["footsteps", "rain_ambience"],
            "duration": 2.0,
            **task_data,
        },
        "priority": 1,
        "metadata": {"user_id": "user123", "agent_id": "video_agent", "scene_id": "scene_005"},
    }


class AssetServer:
    """A real HTTP server on 127.0.0.1 serving test inputs (storyboards, voices, references)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        # POSTs received (callbacks): path -> list of (headers, body).
        self.received: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        routes, received = self.routes, self.received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path not in routes:
                    self.send_response(404)
                    self.end_headers()
                    return
                ctype, body = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.setdefault(self.path, []).append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, path: str, content_type: str, body: bytes) -> str:
        """Serve body at path; returns its URL."""
        self.routes[path] = (content_type, body)
        return self.url + path

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def asset_server() -> Iterator[AssetServer]:
    """One input server per session."""
    server = AssetServer()
    yield server
    server.close()
