"""Run every benchmark (each in its own process, each with its own stack) and print a summary.

python -m bench.run_all [--only dispatch_latency,memory]   (also: `make bench`)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, loadavg

BENCHMARKS = (
    "dispatch_latency",
    "worker_overhead",
    "status_reads",
    "memory",
    "delivery",
    "rate_limit_isolation",
)
TIMEOUT_S = 900


def run(name: str) -> tuple[int, float]:
    """Run one benchmark module; returns its exit status and wall time."""
    print(f"\n######## {name}  (load {loadavg()})", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=Path(__file__).resolve().parent.parent,
            timeout=TIMEOUT_S,
        ).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.monotonic() - t0


def _load(name: str, since: float) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def rows_for(name: str, r: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers of one benchmark's results."""
    rows: list[tuple[str, str]] = []
    if name == "dispatch_latency":
        for key, m in r["modes"].items():
            lat = m["to_processing_ms"]
            d = m["idle_cpu_10s"]["dagster-daemon"]
            rows.append(
                (
                    f"submit->processing, dequeue={key}s (ms)",
                    f"median {lat['median']}  p90 {lat['p90']}  max {lat['max']}  (n={lat['n']})",
                )
            )
            rows.append(
                (
                    f"daemon idle CPU, dequeue={key}s",
                    f"{d['main_cpu_pct']}% (with children {d['tree_cpu_pct']}%)",
                )
            )
    elif name == "worker_overhead":
        med = r["median_s"]
        rows += [
            ("pipeline_loads (max of 20)", str(r["pipeline_loads_max"])),
            ("median generation_seconds", str(med["generation_seconds"])),
            ("median overhead (started->completed - gen) s", str(med["overhead_s"])),
            ("median submit->completed wall s", str(med["submit_to_completed_s"])),
        ]
    elif name == "status_reads":
        for phase, p in r["phases"].items():
            rows.append(
                (phase, f"{p['reads_per_s']} req/s  p50 {p['p50_ms']} ms  p99 {p['p99_ms']} ms")
            )
    elif name == "memory":
        s = r["summary_mb"]
        rows += [
            (
                "api RSS idle / after traffic MiB",
                f"{s['api_idle_rss']} / {s['api_after_traffic_rss']}",
            ),
            (
                "worker RSS (PSS) idle MiB",
                f"{s['worker_idle_rss_total']} ({s['worker_idle_pss_total']})",
            ),
            (
                "worker RSS (PSS) after 1024 image MiB",
                f"{s['worker_after_image_rss_total']} ({s['worker_after_image_pss_total']})",
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument(
        "--summary-only", action="store_true", help="print the table from existing results"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    started = 0.0 if args.summary_only else time.time()
    t0 = time.monotonic()
    outcome: dict[str, tuple[int, float]] = {}
    for name in names:
        outcome[name] = (0, 0.0) if args.summary_only else run(name)
    print(f"\n\n======== summary (total {time.monotonic() - t0:.0f}s, load now {loadavg()})")
    table: list[tuple[str, str, str]] = []
    for name in names:
        rc, wall = outcome[name]
        result = _load(name, started)
        if rc != 0 or result is None:
            table.append((name, "FAILED", f"exit {rc} after {wall:.0f}s"))
            continue
        modes: dict[str, Any] = result.get("modes", {})
        first_mode: dict[str, Any] = next(iter(modes.values()), {})
        load = result.get("load") or first_mode.get("load")
        note = f"{wall:.0f}s" if wall else "(from results)"
        if load:
            note += f", load1 {load['load1_min']}..{load['load1_max']}"
        table.append((name, "", note))
        table += [("", k, v) for k, v in rows_for(name, result)]
    w0 = max(len(a) for a, _, _ in table)
    w1 = max(len(b) for _, b, _ in table)
    for a, b, c in table:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")
    (RESULTS_DIR / "summary.txt").write_text(
        "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in table) + "\n"
    )
    sys.exit(1 if any(rc for rc, _ in outcome.values()) else 0)


if __name__ == "__main__":
    main()
