"""Worker overhead: back-to-back 1024x1024 image tasks on ONE worker slot.

Each task is submitted as soon as the previous one completed. For every task the Dagster
materialization metadata gives `generation_seconds`, `pipeline_loads`, `model_load_seconds`,
`upload_seconds` and the asset's own `total_seconds`; the status API gives started_at and
completed_at. Per-task overhead = (completed_at - started_at) - generation_seconds.

    python -m bench.worker_overhead [--tasks 20] [--resolution 1024x1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import (
    ONE_WORKER,
    LoadMonitor,
    bench_stack,
    image_body,
    machine,
    parse_ts,
    print_kv,
    submit,
    summary,
    wait_terminal,
    write_results,
)

NAME = "worker_overhead"
META_KEYS = (
    "pipeline_loads",
    "worker",
    "generation_seconds",
    "total_seconds",
    "model_load_seconds",
    "upload_seconds",
)


def materialization(instance: Any, task_id: str) -> dict[str, Any]:
    """The task's run (timestamps from Dagster) and its materialization metadata."""
    from dagster import DagsterEventType, RunsFilter

    runs = instance.get_runs(RunsFilter(tags={"moviegen/task_id": task_id}))
    if not runs:
        return {"runs": 0}
    run = runs[0]
    out: dict[str, Any] = {"runs": len(runs), "run_id": run.run_id}
    record = instance.get_run_record_by_id(run.run_id)
    if record is not None and record.start_time and record.end_time:
        out["dagster_run_seconds"] = record.end_time - record.start_time
        out["dagster_created_to_start_seconds"] = (
            record.start_time - record.create_timestamp.timestamp()
        )
    mats = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    if mats and mats[0].asset_materialization is not None:
        md = mats[0].asset_materialization.metadata
        for key in META_KEYS:
            if key in md:
                out[key] = md[key].value
    return out


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--resolution", default="1024x1024")
    args = parser.parse_args()
    before = machine()
    samples: list[dict[str, Any]] = []
    with bench_stack(workers=ONE_WORKER) as bs:
        print(f"stack up in {bs.startup_seconds}s", flush=True)
        load = LoadMonitor()
        with bs.client() as client:
            for i in range(args.tasks):
                t0 = time.monotonic()
                accepted = submit(client, image_body(resolution=args.resolution))
                doc = wait_terminal(client, accepted["task_id"], timeout=600, interval=0.05)
                wall = time.monotonic() - t0
                load.sample()
                row: dict[str, Any] = {
                    "task_id": accepted["task_id"],
                    "status": doc["status"],
                    "submit_to_completed_s": wall,
                }
                if doc.get("started_at") and doc.get("completed_at"):
                    started, done = parse_ts(doc["started_at"]), parse_ts(doc["completed_at"])
                    row["api_started_to_completed_s"] = done - started
                    row["api_created_to_started_s"] = started - parse_ts(accepted["created_at"])
                samples.append(row)
                print(
                    f"  task {i + 1:2d}: {doc['status']} in {wall:6.2f}s wall "
                    f"(started->completed {row.get('api_started_to_completed_s', 0):.2f}s)",
                    flush=True,
                )
        instance = bs.instance()
        for row in samples:
            row.update(materialization(instance, row["task_id"]))
            if row.get("generation_seconds") is not None and "api_started_to_completed_s" in row:
                row["overhead_s"] = row["api_started_to_completed_s"] - row["generation_seconds"]
                row["outside_asset_s"] = row["api_started_to_completed_s"] - row.get(
                    "total_seconds", 0.0
                )
        instance.dispose()
        problems = bs.log_problems()
        startup = bs.startup_seconds
        load_report = load.report()

    loads = [r.get("pipeline_loads") for r in samples]
    warm = samples[1:]
    results: dict[str, Any] = {
        "name": NAME,
        "machine_before": before,
        "machine_after": machine(),
        "startup_seconds": startup,
        "tasks": args.tasks,
        "resolution": args.resolution,
        "completed": sum(1 for r in samples if r["status"] == "completed"),
        "workers_seen": sorted({str(r.get("worker")) for r in samples}),
        "pipeline_loads": loads,
        "pipeline_loads_max": max((x for x in loads if x is not None), default=None),
        "median_s": {
            key: _median(samples, key)
            for key in (
                "generation_seconds",
                "overhead_s",
                "submit_to_completed_s",
                "api_started_to_completed_s",
                "api_created_to_started_s",
                "total_seconds",
                "outside_asset_s",
                "model_load_seconds",
                "upload_seconds",
                "dagster_run_seconds",
                "dagster_created_to_start_seconds",
            )
        },
        "median_s_excluding_first": {
            key: _median(warm, key)
            for key in ("generation_seconds", "overhead_s", "submit_to_completed_s")
        },
        "first_task": {k: samples[0].get(k) for k in ("model_load_seconds", "overhead_s")}
        if samples
        else {},
        "overhead_s": summary([r["overhead_s"] for r in samples if "overhead_s" in r]),
        "load": load_report,
        "log_problems": problems,
        "samples": samples,
    }
    path = write_results(NAME, results)
    med = results["median_s"]
    print_kv(
        f"worker overhead, {args.tasks} x {args.resolution} on one slot",
        [
            ("completed", f"{results['completed']}/{args.tasks}"),
            ("pipeline_loads (max over tasks)", results["pipeline_loads_max"]),
            ("median generation_seconds", med["generation_seconds"]),
            ("median overhead (started->completed - gen)", med["overhead_s"]),
            (
                "  p90 / max overhead",
                f"{results['overhead_s'].get('p90')} / {results['overhead_s'].get('max')}",
            ),
            ("median submit->completed wall", med["submit_to_completed_s"]),
            ("median created->started (API)", med["api_created_to_started_s"]),
            ("median asset total_seconds", med["total_seconds"]),
            ("median upload_seconds", med["upload_seconds"]),
            ("first task model_load_seconds", results["first_task"].get("model_load_seconds")),
            ("load1 min..max", f"{load_report['load1_min']}..{load_report['load1_max']}"),
        ],
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
