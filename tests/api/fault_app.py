"""The real API and dispatch.Dispatcher in a uvicorn process, with injectable process death.

Run as `uvicorn --factory --app-dir tests/api fault_app:create_app`. MOVIEGEN_TEST_KILL_AT
chooses the fault: `before_commit` SIGKILLs the process inside the submit transaction,
`after_commit` once the task is committed (where the run would be launched), and `never` runs
normally. There is no dagster-webserver: launching fails fast, as when it is down, and the task
waits for the reconciler.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from api.main import create_app as create_api
from moviegen_dagster import db, limits, store
from moviegen_dagster.dispatch import Dispatcher
from moviegen_dagster.settings import Settings

KILL_AT_ENV = "MOVIEGEN_TEST_KILL_AT"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjectingKillDispatcher(Dispatcher):
    """dispatch.Dispatcher whose process dies at a chosen point of submit (test fault)."""

    def __init__(self, settings: Settings, pool: db.DictPool, kill_at: str) -> None:
        super().__init__(settings, pool)
        self.kill_at = kill_at

    def submit(
        self, new: store.NewTask, admission: limits.Admission | None = None
    ) -> limits.Admitted:
        """Die with the task inserted but not committed, or submit as the real one does."""
        if self.kill_at == "before_commit":
            with self.pool.connection() as conn:
                units = store.work_units(new.task_type, new.task_data)
                estimated = store.estimate_duration(conn, new.task_type, units)
                limits.admit_and_insert(conn, new, estimated, admission)
                _die()
        return super().submit(new, admission)

    def launch_run(self, row: store.Row) -> str:
        """Die after the commit, or fail as with dagster-webserver down."""
        if self.kill_at == "after_commit":
            _die()
        raise ConnectionError("no dagster-webserver in this test")


def create_app() -> FastAPI:
    """The API on the environment's settings with the fault-injecting dispatcher."""
    settings = Settings()
    db.migrate(settings.require_database_url())
    pool = db.make_pool(settings.require_database_url(), max_size=4, name="fault-app-dispatcher")
    dispatcher: Any = FaultInjectingKillDispatcher(
        settings, pool, os.environ.get(KILL_AT_ENV, "never")
    )
    return create_api(settings, dispatcher=dispatcher)


# -- running it ----------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass
class LiveApi:
    """A started uvicorn process of this app."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def live_api(
    database_url: str,
    home: Path,
    ready_key: str,
    ready_project: str,
    kill_at: str = "never",
    extra_env: dict[str, str] | None = None,
) -> Iterator[LiveApi]:
    """Start the app under uvicorn, wait until it answers an authenticated read; stop it."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MOVIEGEN_HOME": str(home),
        "DAGSTER_HOME": str(home),
        # Nothing listens there: launching and broker checks fail fast.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MOVIEGEN_DAGSTER_PORT": str(free_port()),
        KILL_AT_ENV: kill_at,
        **(extra_env or {}),
    }
    log = home / f"uvicorn-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE),
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "fault_app:create_app",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    live = LiveApi(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        url = f"{live.base_url}/api/v1/projects/{ready_project}/tasks"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url, headers={"X-API-Key": ready_key}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield live
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
