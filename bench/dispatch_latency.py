"""Dispatch latency: submit response -> first status read showing `processing`, on an idle
stack with one worker slot, for MOVIEGEN_DEQUEUE_INTERVAL_SECONDS=0 and =1.

Each task (256x256 image) is submitted only after the previous one completed; status is polled
every 10 ms from the submit response on. Also reports the dagster-daemon's idle CPU over 10 s.

    python -m bench.dispatch_latency [--tasks 20] [--intervals 0,1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import (
    ONE_WORKER,
    TERMINAL,
    LoadMonitor,
    bench_stack,
    cpu_seconds_tree,
    idle_cpu_all,
    image_body,
    machine,
    parse_ts,
    print_kv,
    submit,
    summary,
    wait_terminal,
    write_results,
)
from bench.worker_overhead import materialization

NAME = "dispatch_latency"
POLL_S = 0.010


def one_task(client: Any) -> dict[str, Any]:
    """Submit one task, time it to `processing`, then wait for it to finish."""
    t_send = time.monotonic()
    accepted = submit(client, image_body(resolution="256x256"))
    t_submitted = time.monotonic()
    task_id = accepted["task_id"]
    reads = 0
    status = accepted["status"]
    doc: dict[str, Any] = {}
    deadline = t_submitted + 120
    while time.monotonic() < deadline:
        doc = client.get(f"/api/v1/tasks/{task_id}/status").json()
        reads += 1
        status = doc["status"]
        if status == "processing" or status in TERMINAL:
            break
        time.sleep(POLL_S)
    t_seen = time.monotonic()
    final = doc if doc.get("status") in TERMINAL else wait_terminal(client, task_id)
    created = parse_ts(accepted["created_at"])
    started = parse_ts(final["started_at"]) if final.get("started_at") else None
    return {
        "task_id": task_id,
        "submit_s": t_submitted - t_send,
        "to_processing_s": t_seen - t_submitted,
        "first_seen_status": status,
        "status_reads": reads,
        "server_created_to_started_s": (started - created) if started else None,
        "final_status": final["status"],
        "submit_to_completed_s": time.monotonic() - t_submitted,
    }


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def run_mode(interval: int, tasks: int) -> dict[str, Any]:
    """Start a stack with this dequeue interval and measure `tasks` dispatches."""
    print(f"\n-- MOVIEGEN_DEQUEUE_INTERVAL_SECONDS={interval}: starting stack", flush=True)
    extra = {"MOVIEGEN_DEQUEUE_INTERVAL_SECONDS": str(interval)}
    with bench_stack(workers=ONE_WORKER, extra_env=extra) as bs:
        print(f"   stack up in {bs.startup_seconds}s", flush=True)
        load = LoadMonitor()
        daemon_pid = bs.pid("dagster-daemon")
        with bs.client() as client:
            # One warm-up task: the slot's first run loads the pipeline and imports code.
            warm = one_task(client)
            samples = []
            cpu0, t_phase = cpu_seconds_tree(daemon_pid), time.monotonic()
            for i in range(tasks):
                samples.append(one_task(client))
                load.sample()
                last = samples[-1]
                print(
                    f"   task {i + 1:2d}: to processing {last['to_processing_s'] * 1000:7.1f} ms"
                    f" ({last['status_reads']} reads), {last['final_status']}",
                    flush=True,
                )
            cpu1, t_phase = cpu_seconds_tree(daemon_pid), time.monotonic() - t_phase
        # Daemon CPU while tasks ran (its loop work grows with the runs it looks at).
        busy_cpu = {
            "main_cpu_pct": round(100 * (cpu1[daemon_pid] - cpu0[daemon_pid]) / t_phase, 1),
            "tree_cpu_pct": round(
                100 * sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0) / t_phase, 1
            ),
        }
        instance = bs.instance()
        for sample in samples:
            md = materialization(instance, sample["task_id"])
            for key in ("generation_seconds", "total_seconds", "dagster_run_seconds"):
                sample[key] = md.get(key)
        instance.dispose()
        time.sleep(2)
        idle = idle_cpu_all(bs, 10.0)
        problems = bs.log_problems()
        startup = bs.startup_seconds
    lat = [s["to_processing_s"] for s in samples]
    server = [s["server_created_to_started_s"] for s in samples if s["server_created_to_started_s"]]
    return {
        "dequeue_interval_seconds": interval,
        "startup_seconds": startup,
        "tasks": tasks,
        "warmup_task": warm,
        "to_processing_ms": summary(lat, 1000, 1),
        "submit_ms": summary([s["submit_s"] for s in samples], 1000, 1),
        "server_created_to_started_ms": summary(server, 1000, 1),
        "status_reads_per_task": summary([s["status_reads"] for s in samples], 1, 1),
        "not_completed": sum(1 for s in samples if s["final_status"] != "completed"),
        "idle_cpu_10s": idle,
        "daemon_cpu_while_tasks_ran": busy_cpu,
        "median_s": {
            key: _median([s.get(key) for s in samples])
            for key in (
                "submit_to_completed_s",
                "generation_seconds",
                "total_seconds",
                "dagster_run_seconds",
            )
        },
        "load": load.report(),
        "log_problems": problems,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--intervals", default="0,1")
    args = parser.parse_args()
    results: dict[str, Any] = {"name": NAME, "machine_before": machine(), "modes": {}}
    for interval in (int(x) for x in args.intervals.split(",")):
        results["modes"][str(interval)] = run_mode(interval, args.tasks)
    results["machine_after"] = machine()
    path = write_results(NAME, results)
    for key, mode in results["modes"].items():
        lat = mode["to_processing_ms"]
        daemon = mode["idle_cpu_10s"]["dagster-daemon"]
        server = mode["server_created_to_started_ms"]
        busy = mode["daemon_cpu_while_tasks_ran"]
        print_kv(
            f"dispatch latency, dequeue interval {key}s ({mode['tasks']} tasks)",
            [
                ("submit -> processing median", f"{lat['median']} ms"),
                ("p90 / max", f"{lat['p90']} / {lat['max']} ms"),
                ("server created -> started median", f"{server['median']} ms"),
                ("submit request median", f"{mode['submit_ms']['median']} ms"),
                (
                    "daemon idle CPU (main / with children)",
                    f"{daemon['main_cpu_pct']}% / {daemon['tree_cpu_pct']}%",
                ),
                (
                    "daemon CPU while tasks ran (main / with children)",
                    f"{busy['main_cpu_pct']}% / {busy['tree_cpu_pct']}%",
                ),
                (
                    "median submit->completed / generation_seconds",
                    f"{mode['median_s']['submit_to_completed_s']} s / "
                    f"{mode['median_s']['generation_seconds']} s",
                ),
                ("load1 min..max", f"{mode['load']['load1_min']}..{mode['load']['load1_max']}"),
            ],
        )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
