"""Rate-limit isolation: project B's submit latency while project A floods past its limit.

One stack with a per-project limit of `--rate` submits/minute (burst `--burst`). Project B
submits one task every `--b-interval` seconds (under its own limit), first alone (baseline),
then while `--flood-threads` threads submit to project A as fast as they can. Tasks are scene
videos and the stack has no gpu_heavy slot, so nothing executes: the numbers are the API's.

    python -m bench.rate_limit_isolation [--seconds 60] [--flood-threads 6] [--rate 120]
        [--burst 60] [--b-interval 0.75]

The defaults are the service's default limits; B's pace (80/minute) stays under them.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import (
    ONE_WORKER,
    LoadMonitor,
    bench_stack,
    machine,
    percentile,
    print_kv,
    summary,
    write_results,
)

NAME = "rate_limit_isolation"
PROJECT_A = "flood_a"
PROJECT_B = "quiet_b"
KEY_A = "bench-key-flood-a-0123456789abcdef"
KEY_B = "bench-key-quiet-b-0123456789abcdef"
WARM_UP = 5


def video_body(project: str) -> dict[str, Any]:
    """A scene video submission (queued on gpu_heavy, which has no slot here)."""
    return {
        "project_id": project,
        "task_type": "generate_video",
        "task_data": {
            "storyboard_images": ["https://example.com/frame1.jpg"],
            "scene_description": "Detective enters the dark alley",
        },
        "metadata": {"scene_id": "scene_005"},
    }


@dataclass
class Samples:
    """Latencies (seconds) and status codes of one client's requests."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    by_code: dict[int, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: int, seconds: float) -> None:
        """Record one request."""
        with self.lock:
            self.latencies.append(seconds)
            self.codes[code] += 1
            self.by_code.setdefault(code, []).append(seconds)


def latency_ms(values: list[float]) -> dict[str, Any]:
    """summary() in milliseconds plus p50/p95."""
    out = summary(values, scale=1000.0, digits=2)
    if values:
        out["p50"] = round(percentile(values, 50) * 1000.0, 2)
        out["p95"] = round(percentile(values, 95) * 1000.0, 2)
    return out


def quiet_client(client: httpx.Client, seconds: float, interval: float) -> Samples:
    """Project B: one submission every `interval` seconds for `seconds`."""
    samples = Samples()
    body = video_body(PROJECT_B)
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        resp = client.post("/api/v1/tasks/submit", json=body)
        samples.add(resp.status_code, time.monotonic() - t0)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return samples


def flood(api_url: str, stop: threading.Event, samples: Samples) -> None:
    """Project A: submit back to back until stopped."""
    body = video_body(PROJECT_A)
    with httpx.Client(base_url=api_url, headers={"X-API-Key": KEY_A}, timeout=30) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = client.post("/api/v1/tasks/submit", json=body).status_code
            except httpx.HTTPError:
                code = 0
            samples.add(code, time.monotonic() - t0)


def run(seconds: float, threads: int, rate: float, burst: int, interval: float) -> dict[str, Any]:
    """Start a stack, measure the baseline, then the same under A's flood."""
    env = {
        "MOVIEGEN_SUBMIT_RATE_PER_MINUTE": str(rate),
        "MOVIEGEN_SUBMIT_BURST": str(burst),
        "MOVIEGEN_MAX_QUEUED_PER_PROJECT": "0",
    }
    keys = f"{KEY_A}:{PROJECT_A},{KEY_B}:{PROJECT_B}"
    out: dict[str, Any] = {}
    with bench_stack(workers=ONE_WORKER, extra_env=env, api_keys=keys) as bs:
        out["startup_seconds"] = bs.startup_seconds
        with httpx.Client(base_url=bs.api_url, headers={"X-API-Key": KEY_B}, timeout=30) as b:
            # Warm-up: first requests open pools and load the code location's partitions.
            for _ in range(WARM_UP):
                b.post("/api/v1/tasks/submit", json=video_body(PROJECT_B))
            time.sleep(WARM_UP / (rate / 60.0) if rate else 0)  # B's bucket full again
            monitor = LoadMonitor()
            baseline = quiet_client(b, seconds, interval)
            out["baseline_load"] = monitor.report()

            monitor = LoadMonitor()
            stop = threading.Event()
            flooded = Samples()
            workers = [
                threading.Thread(target=flood, args=(bs.api_url, stop, flooded), daemon=True)
                for _ in range(threads)
            ]
            t0 = time.monotonic()
            for w in workers:
                w.start()
            under_flood = quiet_client(b, seconds, interval)
            stop.set()
            for w in workers:
                w.join(timeout=60)
            flood_seconds = time.monotonic() - t0
            out["flood_load"] = monitor.report()
        out["log_problems"] = bs.log_problems()
    out["b_baseline"] = {"latency_ms": latency_ms(baseline.latencies), "codes": baseline.codes}
    out["b_under_flood"] = {
        "latency_ms": latency_ms(under_flood.latencies),
        "codes": under_flood.codes,
    }
    accepted = flooded.codes.get(202, 0)
    out["a_flood"] = {
        "threads": threads,
        "seconds": round(flood_seconds, 1),
        "requests": sum(flooded.codes.values()),
        "requests_per_s": round(sum(flooded.codes.values()) / flood_seconds, 1),
        "codes": flooded.codes,
        "accepted_per_minute": round(accepted / flood_seconds * 60.0, 1),
        "allowed_per_minute": round(rate + burst * 60.0 / flood_seconds, 1),
        "latency_ms_202": latency_ms(flooded.by_code.get(202, [])),
        "latency_ms_429": latency_ms(flooded.by_code.get(429, [])),
    }
    base, fl = out["b_baseline"]["latency_ms"], out["b_under_flood"]["latency_ms"]
    out["b_p50_ratio"] = round(fl["p50"] / base["p50"], 2) if base.get("p50") else None
    out["b_p99_ratio"] = round(fl["p99"] / base["p99"], 2) if base.get("p99") else None
    return out


def main() -> None:
    """Run, print and write bench/results/rate_limit_isolation.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--flood-threads", type=int, default=6)
    parser.add_argument("--rate", type=float, default=120.0, help="submits/minute per project")
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--b-interval", type=float, default=0.75)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "name": NAME,
        "machine_before": machine(),
        "params": vars(args),
    }
    results.update(run(args.seconds, args.flood_threads, args.rate, args.burst, args.b_interval))
    results["machine_after"] = machine()
    path = write_results(NAME, results)
    b0, b1 = results["b_baseline"], results["b_under_flood"]
    a = results["a_flood"]
    rows = [
        ("B baseline p50/p95/p99 ms", _ppp(b0["latency_ms"])),
        ("B under flood p50/p95/p99 ms", _ppp(b1["latency_ms"])),
        ("B codes baseline / flood", f"{dict(b0['codes'])} / {dict(b1['codes'])}"),
        ("A flood req/s", a["requests_per_s"]),
        ("A codes", dict(a["codes"])),
        ("A accepted/min (allowed)", f"{a['accepted_per_minute']} ({a['allowed_per_minute']})"),
        ("A 429 p50/p95/p99 ms", _ppp(a["latency_ms_429"])),
        ("A 202 p50/p95/p99 ms", _ppp(a["latency_ms_202"])),
        ("load baseline / flood", f"{results['baseline_load']} / {results['flood_load']}"),
    ]
    print_kv(f"{NAME} -> {path}", rows)


def _ppp(lat: dict[str, Any]) -> str:
    return f"{lat.get('p50')} / {lat.get('p95')} / {lat.get('p99')} (n={lat.get('n')})"


if __name__ == "__main__":
    main()
