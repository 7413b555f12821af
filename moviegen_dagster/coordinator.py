"""Runs MovieGen did not launch itself become tasks before they queue.

A run launched from the Dagster UI ("Materialize" on a partition, "Re-execute"), by a backfill
or by a schedule carries none of the tags the API sets. `MovieGenRunCoordinator` binds such a
run to a task when it is submitted, before the queue sees it, so the worker-type concurrency
limit, the Celery queue and the priority apply to it exactly as to API tasks:

- a run carrying a task that failed, re-executed (it has a parent run), reopens that task:
  same id, attempt + 1; completed and cancelled tasks never change;
- a run without a task (a new take of a partition) gets a NEW task, copying the request of
  the partition's latest task of that type, with `parent_task_id` pointing at it.

The media assets do the same when their run starts (`ensure_task`), for runs submitted by any
other coordinator.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from psycopg.rows import dict_row

from moviegen_dagster import store, tags
from moviegen_dagster.settings import (
    ASSET_BY_TASK_TYPE,
    WORKER_TYPE_BY_TASK,
    Settings,
    get_settings,
)

log = logging.getLogger("moviegen.coordinator")

# Media asset -> the task type (and job) that produces it.
TASK_TYPE_BY_ASSET = {asset: task_type for task_type, asset in ASSET_BY_TASK_TYPE.items()}


def run_task_type(run: DagsterRun) -> str | None:
    """The task type a run materializes, or None (not a media run, or several media assets)."""
    if run.job_name in ASSET_BY_TASK_TYPE:
        return run.job_name
    selected = run.asset_selection or set()
    media = [TASK_TYPE_BY_ASSET.get(key.to_user_string()) for key in selected]
    if len(media) == 1 and media[0] is not None:
        return media[0]
    return None


def routing_tags(task_type: str) -> dict[str, str]:
    """Queue and concurrency-limit tags of a task type's runs."""
    worker_type = WORKER_TYPE_BY_TASK[task_type]
    return {tags.WORKER_TYPE: worker_type, tags.CELERY_QUEUE: worker_type}


def bind_run(
    conn: psycopg.Connection[Any], run: DagsterRun, settings: Settings
) -> tuple[store.Row | None, dict[str, str]]:
    """Bind a run to its task (reopening or creating it); returns the task and tags to add."""
    from moviegen_dagster.dispatch import run_tags

    task_type = run_task_type(run)
    if task_type is None:
        return None, {}
    missing_routing = {k: v for k, v in routing_tags(task_type).items() if k not in run.tags}
    task_id = run.tags.get(tags.TASK_ID)
    if task_id:
        row = store.get_task(conn, task_id, None)
        if (
            row is not None
            and row["status"] == "failed"
            and row["run_id"] != run.run_id
            and tags.PARENT_RUN_ID in run.tags
        ):
            row = store.reopen_for_rerun(conn, row["task_id"], run.run_id) or row
        return row, missing_routing
    partition = run.tags.get(tags.PARTITION)
    if not partition:
        return None, missing_routing
    # One task per run, even when the coordinator and the run's first step race for it.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (run.run_id,))
    row = store.task_for_run(conn, run.run_id)
    if row is None:
        parent = store.latest_task_in_partition(conn, partition, task_type)
        if parent is None:
            return None, missing_routing
        backfill_id = _uuid(run.tags.get(tags.BACKFILL_ID))
        in_backfill = backfill_id is not None or tags.DAGSTER_BACKFILL in run.tags
        # Backfill takes are the least urgent tasks; a UI take inherits its parent's urgency.
        priority = 10 if in_backfill else int(parent["priority"])
        row = store.insert_child_task(conn, parent, run.run_id, priority, backfill_id)
    new_tags = run_tags(row, settings)
    new_tags[tags.PARENT_TASK_ID] = str(row["parent_task_id"])
    # Whatever the launcher chose (a backfill's low priority, the partition) stays.
    return row, {k: v for k, v in new_tags.items() if k not in run.tags}


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def ensure_task(instance: Any, run: DagsterRun, database_url: str) -> dict[str, str]:
    """Bind the run to its task in the database and on the run; returns the tags added."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        _, new_tags = bind_run(conn, run, get_settings())
        conn.commit()
    if new_tags:
        instance.add_run_tags(run.run_id, new_tags)
    return new_tags


def needs_binding(run_tags: Mapping[str, str]) -> bool:
    """Cheap pre-check: API runs (task tag, routing tags, no parent run) need no database."""
    return (
        tags.TASK_ID not in run_tags
        or tags.PARENT_RUN_ID in run_tags
        or tags.CELERY_QUEUE not in run_tags
    )


class MovieGenRunCoordinator(QueuedRunCoordinator):
    """The queued run coordinator, binding every submitted media run to a task first."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        """Tag the run with its task, queue and worker type, then enqueue it."""
        run = context.dagster_run
        if run.tags.get(tags.RETRY_ON_STEP_FAILURE) == "true":
            # Inherited from a parent whose step failed on an unreachable database
            # (step_retry.py): this run's own step failures are task errors again.
            self._instance.add_run_tags(run.run_id, {tags.RETRY_ON_STEP_FAILURE: "false"})
        if needs_binding(run.tags):
            try:
                ensure_task(self._instance, run, get_settings().require_database_url())
            except Exception:
                # Never refuse a run here: its first step binds it (or fails it, naming why).
                log.warning("could not bind run %s to a task", run.run_id, exc_info=True)
        return super().submit_run(context)


def bound_task_id(context: Any, database_url: str) -> str:
    """The task of the step's run, binding the run first when it was launched outside the API."""
    import dagster as dg

    task_id = context.run.tags.get(tags.TASK_ID)
    if needs_binding(context.run.tags):
        added = ensure_task(context.instance, context.run, database_url)
        task_id = added.get(tags.TASK_ID, task_id)
    if not task_id:
        raise dg.Failure(
            "this run carries no moviegen/task_id tag and its partition has no task to take the "
            "request from: submit a task for the partition through the API first, and "
            "materialize one media asset per run",
            allow_retries=False,
        )
    return str(task_id)


def closed_task_message(task: store.Row) -> str:
    """Why a run refuses to work on a task that is no longer open."""
    status = task["status"]
    if status in ("completed", "cancelled"):
        return (
            f"task {task['task_id']} is already {status} and never changes: materialize its "
            "partition again (without the moviegen/task_id tag) for a new take"
        )
    return f"task {task['task_id']} is already {status}"
