"""Shared helpers of the benchmarks: one embedded stack per benchmark, timing statistics,
process accounting from /proc, and writing results to bench/results/<name>.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

KEY_A = "bench-key-project-a-0123456789"
PROJECT_A = "project_a"
ONE_WORKER = "gpu_heavy=0,gpu_light=1"
TERMINAL = ("completed", "failed", "cancelled")


# -- statistics ----------------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, median, p90, p99, min, max and mean of values (multiplied by scale, e.g. 1000 for ms)."""
    if not values:
        return {"n": 0}
    v = [x * scale for x in values]
    return {
        "n": len(v),
        "median": round(statistics.median(v), digits),
        "p90": round(percentile(v, 90), digits),
        "p99": round(percentile(v, 99), digits),
        "min": round(min(v), digits),
        "max": round(max(v), digits),
        "mean": round(statistics.fmean(v), digits),
    }


# -- machine state -------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers were measured on (the machine is shared: load matters)."""
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "mem_available_mb": psutil.virtual_memory().available // (1024 * 1024),
    }


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class LoadMonitor:
    """Samples the 1-minute load average and whole-machine CPU use while a benchmark runs."""

    samples: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _cpu0: Any = field(default_factory=psutil.cpu_times)

    def sample(self) -> None:
        """Record the current 1-minute load average."""
        self.samples.append(os.getloadavg()[0])

    def report(self) -> dict[str, Any]:
        """Load averages seen and the machine's CPU busy share since start."""
        self.sample()
        cpu1 = psutil.cpu_times()
        busy0 = sum(self._cpu0) - self._cpu0.idle - getattr(self._cpu0, "iowait", 0.0)
        busy1 = sum(cpu1) - cpu1.idle - getattr(cpu1, "iowait", 0.0)
        total = sum(cpu1) - sum(self._cpu0)
        return {
            "load1_min": round(min(self.samples), 2),
            "load1_max": round(max(self.samples), 2),
            "machine_cpu_busy_pct": round(100.0 * (busy1 - busy0) / total, 1) if total else None,
            "seconds": round(time.monotonic() - self.started, 1),
        }


def cpu_seconds_tree(pid: int) -> dict[int, float]:
    """utime+stime (seconds) of a process and its live descendants, from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return out
    for p in pids:
        try:
            raw = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        rest = raw[raw.rindex(")") + 2 :].split()
        out[p] = (int(rest[11]) + int(rest[12])) / ticks
    return out


def idle_cpu(pid: int, seconds: float = 10.0) -> dict[str, Any]:
    """CPU share used by a process (and, separately, its descendants) over `seconds`."""
    before = cpu_seconds_tree(pid)
    time.sleep(seconds)
    after = cpu_seconds_tree(pid)
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    children = sum(after[p] - before[p] for p in after if p != pid and p in before)
    return {
        "seconds": seconds,
        "main_cpu_pct": round(100.0 * main / seconds, 2),
        "children_cpu_pct": round(100.0 * children / seconds, 2),
        "tree_cpu_pct": round(100.0 * (main + children) / seconds, 2),
        "children": len(after) - 1,
    }


def rss_tree(pid: int) -> dict[str, Any]:
    """Resident memory (MiB) of a process and each descendant; PSS too (shared pages split,
    so forked children that share the parent's pages are not counted twice)."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    rows = []
    for proc in procs:
        try:
            info = proc.memory_full_info()
            rows.append(
                {
                    "pid": proc.pid,
                    "name": " ".join(proc.cmdline()[:3])[-60:],
                    "rss_mb": _mb(info.rss),
                    "pss_mb": _mb(getattr(info, "pss", 0)),
                    "uss_mb": _mb(getattr(info, "uss", 0)),
                }
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {
        "main_rss_mb": rows[0]["rss_mb"] if rows else None,
        "total_rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "total_pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
        "processes": rows,
    }


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


# -- the stack -----------------------------------------------------------------------------
@dataclass
class BenchStack:
    """A started stack and what benchmarks need from it."""

    stack: Any
    env: dict[str, str]
    api_url: str
    home: Path
    admin_key: str
    startup_seconds: float

    def client(self, key: str | None = KEY_A, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client for the API with the given key."""
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def pid(self, name: str) -> int:
        """Pid of one of the stack's children (names as in Stack.procs)."""
        for pname, proc in self.stack.procs:
            if pname == name:
                return int(proc.pid)
        raise KeyError(name)

    def instance(self) -> Any:
        """A Dagster instance on the stack's storage (sets DAGSTER_HOME in this process)."""
        from dagster import DagsterInstance

        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        return DagsterInstance.get()

    def log_problems(self) -> dict[str, list[str]]:
        """Lines that look like errors in the stack's logs (deduplicated, at most 15 per log)."""
        markers = ("Traceback", "ERROR", "Error:", "CRITICAL", "Exception")
        found: dict[str, list[str]] = {}
        for path in sorted((self.home / "logs").glob("*.log")):
            seen: list[str] = []
            for line in path.read_text(errors="replace").splitlines():
                if any(m in line for m in markers):
                    short = line.strip()[:300]
                    if short not in seen:
                        seen.append(short)
            if seen:
                found[path.name] = seen[:15]
        return found


@contextmanager
def bench_stack(
    workers: str = ONE_WORKER,
    extra_env: dict[str, str] | None = None,
    api_keys: str | None = None,
    keep_home: bool = False,
) -> Iterator[BenchStack]:
    """Start a whole stack in a temporary MOVIEGEN_HOME on free ports; always stop it."""
    from moviegen_dagster import settings as settings_mod
    from moviegen_dagster.stack import Stack, free_port

    home = Path(tempfile.mkdtemp(prefix="moviegen-bench-"))
    overrides = {
        "MOVIEGEN_HOME": str(home),
        "MOVIEGEN_API_PORT": str(free_port()),
        "MOVIEGEN_DAGSTER_PORT": str(free_port()),
        "MOVIEGEN_API_KEYS": api_keys or f"{KEY_A}:{PROJECT_A}",
        "MOVIEGEN_WORKERS": workers,
        **(extra_env or {}),
    }
    for name in ("DATABASE_URL", "REDIS_URL", "MOVIEGEN_ADMIN_KEY", "DAGSTER_HOME"):
        os.environ.pop(name, None)
    os.environ.update(overrides)
    settings_mod.get_settings.cache_clear()
    settings = settings_mod.Settings()
    stack = Stack(settings)
    t0 = time.monotonic()
    try:
        env = stack.start()
        yield BenchStack(
            stack=stack,
            env=env,
            api_url=f"http://127.0.0.1:{settings.api_port}",
            home=home,
            admin_key=env["MOVIEGEN_ADMIN_KEY"],
            startup_seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        stack.stop()
        for name in overrides:
            os.environ.pop(name, None)
        if keep_home:
            print(f"stack home kept at {home}")
        else:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


def image_body(project: str = PROJECT_A, resolution: str = "256x256") -> dict[str, Any]:
    """A character image submission (the tests' shape)."""
    return {
        "project_id": project,
        "task_type": "generate_image",
        "task_data": {
            "character_description": "Detective in 1920s noir style",
            "pose": "standing_confident",
            "lighting": "dramatic_shadow",
            "resolution": resolution,
        },
        "metadata": {"character_id": "detective_main"},
    }


def submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST a task; raises unless accepted (202)."""
    resp = client.post("/api/v1/tasks/submit", json=body)
    if resp.status_code != 202:
        raise RuntimeError(f"submit answered {resp.status_code}: {resp.text}")
    return dict(resp.json())


def poll(check: Callable[[], T | None], timeout: float, interval: float) -> T:
    """Call `check` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"not done within {timeout}s (last value: {last!r})")


def wait_terminal(
    client: httpx.Client, task_id: str, timeout: float = 300.0, interval: float = 0.05
) -> dict[str, Any]:
    """Poll a task's status until it is terminal; returns the final status document."""

    def done() -> dict[str, Any] | None:
        doc: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}/status").json()
        return doc if doc["status"] in TERMINAL else None

    return poll(done, timeout, interval)


def parse_ts(value: str) -> float:
    """Epoch seconds of an API timestamp ("...Z")."""
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def print_kv(title: str, rows: list[tuple[str, Any]]) -> None:
    """A small aligned two-column table."""
    print(f"\n== {title}")
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def idle_cpu_all(bs: BenchStack, seconds: float = 10.0) -> dict[str, dict[str, Any]]:
    """idle_cpu() of every child process of the stack over the same window."""
    pids = {name: int(proc.pid) for name, proc in bs.stack.procs}
    before = {name: cpu_seconds_tree(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    out: dict[str, dict[str, Any]] = {}
    for name, pid in pids.items():
        after = cpu_seconds_tree(pid)
        main = after.get(pid, 0.0) - before[name].get(pid, 0.0)
        kids = sum(after[p] - before[name][p] for p in after if p != pid and p in before[name])
        out[name] = {
            "main_cpu_pct": round(100.0 * main / seconds, 2),
            "children_cpu_pct": round(100.0 * kids / seconds, 2),
            "tree_cpu_pct": round(100.0 * (main + kids) / seconds, 2),
            "children": len(after) - 1,
        }
    return out
