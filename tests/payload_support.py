"""A real PayloadCMS 3 for tests: installs tests/payload_app's packages, runs it on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

APP_DIR = Path(__file__).resolve().parent / "payload_app"
# Written into node_modules after an install: which lockfile (and Node) it was installed from.
STAMP_NAME = ".moviegen-lock-hash"
START_TIMEOUT_S = 180.0
# Build folders of running instances, under APP_DIR (git-ignored).
INSTANCE_DIR = ".next-test"


@dataclass(frozen=True)
class PayloadInstance:
    """A running test Payload: base URL, the seeded user's API key, where uploads land."""

    url: str
    api_key: str
    upload_dir: Path
    log_path: Path

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Payload's API-key header for the seeded `users` user (or another key)."""
        return {"Authorization": f"users API-Key {key or self.api_key}"}


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a command; on failure raise with its output (npm's errors are in stdout/stderr)."""
    proc = subprocess.run(cmd, cwd=cwd, env=_npm_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )


def _npm_env() -> dict[str, str]:
    """npm without its update check, audit and funding requests."""
    return {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_audit": "false",
        "npm_config_fund": "false",
    }


def lock_hash() -> str:
    """Identity of an install: lockfile, package.json, Node major version and platform."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise RuntimeError("Node.js 20+ with npm is needed for the PayloadCMS tests (not on PATH)")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for name in ("package-lock.json", "package.json"):
        digest.update((APP_DIR / name).read_bytes())
    digest.update(f"{node_version.split('.')[0]}|{platform.system()}|{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where installed node_modules trees are kept between runs (CI can cache this folder)."""
    if explicit := os.environ.get("MOVIEGEN_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moviegen"


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link copy when on one filesystem (instant), else a real copy."""
    try:
        subprocess.run(["cp", "-al", str(src), str(dst)], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        shutil.rmtree(dst, ignore_errors=True)
        subprocess.run(["cp", "-a", str(src), str(dst)], check=True, capture_output=True)


def ensure_node_modules() -> Path:
    """Install the app's exact packages once: reuse a matching install, then the cache, then npm."""
    wanted = lock_hash()
    modules = APP_DIR / "node_modules"
    stamp = modules / STAMP_NAME
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return modules
    cached = cache_root() / f"payload-{wanted}" / "node_modules"
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions (or a test and a developer) must not install into the same tree at once.
    with open(cached.parent.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return modules
        shutil.rmtree(modules, ignore_errors=True)
        if (cached / STAMP_NAME).is_file():
            _copy_tree(cached, modules)
            return modules
        # --prefer-offline: npm's own cache (~/.npm) answers what it can without the registry.
        _run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], APP_DIR)
        stamp.write_text(wanted)
        partial = cached.with_name(f"node_modules.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _copy_tree(modules, partial)
            shutil.rmtree(cached, ignore_errors=True)
            partial.rename(cached)
        except (OSError, subprocess.CalledProcessError):
            # The cache only saves time; a full disk must not fail the tests.
            shutil.rmtree(partial, ignore_errors=True)
    return modules


@dataclass(frozen=True)
class _InstanceFiles:
    """Per-instance build folder and tsconfig, relative to APP_DIR (Next wants them inside)."""

    dist_dir: str
    tsconfig: str

    def remove(self) -> None:
        """Delete both (the build folder holds the dev bundles and Turbopack's cache)."""
        shutil.rmtree(APP_DIR / self.dist_dir, ignore_errors=True)
        (APP_DIR / self.tsconfig).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_instance_files() -> _InstanceFiles:
    """Name this instance's files after our pid, clearing those of test sessions that died."""
    for stale in APP_DIR.glob("tsconfig.instance-*.json"):
        old = stale.name.removeprefix("tsconfig.instance-").removesuffix(".json")
        pid = old.split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _InstanceFiles(f"{INSTANCE_DIR}/{old}", stale.name).remove()
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    files = _InstanceFiles(f"{INSTANCE_DIR}/{name}", f"tsconfig.instance-{name}.json")
    # `extends` makes Next leave this file alone instead of rewriting it.
    (APP_DIR / files.tsconfig).write_text('{ "extends": "./tsconfig.json" }\n')
    return files


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (npm/next spawn children): TERM, then KILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_payload(tmp_dir: Path, api_key: str | None = None) -> Iterator[PayloadInstance]:
    """Start the test app with `next dev` on a free loopback port and a fresh SQLite file."""
    ensure_node_modules()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    api_key = api_key or f"moviegen-test-{secrets.token_hex(16)}"
    port = free_port()
    instance = _claim_instance_files()
    url = f"http://127.0.0.1:{port}"
    upload_dir = tmp_dir / "uploads"
    log_path = tmp_dir / "payload.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        "NODE_ENV": "development",
        "NEXT_TELEMETRY_DISABLED": "1",
        # Every Node process of the app refuses connections that would leave 127.0.0.1.
        "NODE_OPTIONS": f'--require "{APP_DIR / "loopback-only.cjs"}"',
        "PAYLOAD_SECRET": secrets.token_hex(24),
        "PAYLOAD_TEST_DB": str(tmp_dir / "payload.db"),
        "PAYLOAD_TEST_UPLOAD_DIR": str(upload_dir),
        "PAYLOAD_TEST_API_KEY": api_key,
        # Own build folder and tsconfig (see next.config.mjs): instances may run side by side.
        "PAYLOAD_TEST_DIST_DIR": instance.dist_dir,
        "PAYLOAD_TEST_TSCONFIG": instance.tsconfig,
    }
    next_bin = APP_DIR / "node_modules" / "next" / "dist" / "bin" / "next"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["node", str(next_bin), "dev", "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=APP_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so stopping it takes next-server and its workers along.
            start_new_session=True,
        )
    try:
        _wait_ready(proc, url, api_key, log_path)
        yield PayloadInstance(url=url, api_key=api_key, upload_dir=upload_dir, log_path=log_path)
    finally:
        _stop(proc)
        instance.remove()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, api_key: str, log_path: Path) -> None:
    """Poll /api/users/me until it names the seeded user (it answers 200 with a null user
    before the seed hook ran, and for a wrong key)."""
    headers = {"Authorization": f"users API-Key {api_key}"}
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Payload exited with {proc.returncode} while starting:\n{_tail(log_path)}"
                )
            try:
                resp = client.get("/api/users/me")
                if resp.status_code == 200 and (resp.json().get("user") or {}).get("id"):
                    return
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.3)
    raise RuntimeError(f"Payload not ready within {START_TIMEOUT_S:.0f}s:\n{_tail(log_path)}")
