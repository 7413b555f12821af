"""Sensors that keep tasks and runs in line: launch what the API missed, mirror run status."""

from __future__ import annotations

import dagster as dg

from moviegen_dagster import store
from moviegen_dagster.db import connect
from moviegen_dagster.dispatch import latest_run, run_tags, sync_task
from moviegen_dagster.jobs import TASK_JOBS
from moviegen_dagster.settings import get_settings


@dg.sensor(
    jobs=list(TASK_JOBS.values()),
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def reconcile_tasks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Launch runs for accepted tasks the API could not launch (the durable dispatch path)."""
    settings = get_settings()
    requests: list[dg.RunRequest] = []
    partitions: set[str] = set()
    with connect(settings.require_database_url()) as conn:
        for row in store.unlaunched(conn, settings.reconcile_after_seconds):
            existing = latest_run(context.instance, row)
            if existing is not None:
                # The API launched it but died before recording the run: adopt it.
                store.set_run(conn, row["task_id"], existing.run_id)
                continue
            if row["task_type"] not in TASK_JOBS:
                continue
            if not context.instance.has_dynamic_partition("scenes", row["partition_key"]):
                partitions.add(row["partition_key"])
            requests.append(
                dg.RunRequest(
                    run_key=str(row["task_id"]),
                    job_name=row["task_type"],
                    partition_key=row["partition_key"],
                    tags=run_tags(row, settings),
                )
            )
        conn.commit()
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest("scenes", sorted(partitions))] if partitions else []
        ),
    )


@dg.sensor(minimum_interval_seconds=2, default_status=dg.DefaultSensorStatus.RUNNING)
def sync_task_status(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Mirror run status onto open tasks so listings and filters converge without reads."""
    settings = get_settings()
    changed = 0
    with connect(settings.require_database_url()) as conn:
        for row in store.open_with_runs(conn):
            if sync_task(conn, context.instance, row) is not row:
                changed += 1
        conn.commit()
    return dg.SkipReason(f"{changed} task(s) updated")
