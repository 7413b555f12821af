"""dagster-celery's run launcher, fixed for cancellation, per-type queues and dead workers."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import time
from typing import Any

import psycopg
from dagster import DagsterEventType, DagsterRun, DagsterRunStatus
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_TASK_ID_TAG

from moviegen_dagster import tags
from moviegen_dagster.settings import get_settings
from moviegen_dagster.tags import MAX_RETRIES as MAX_RETRIES_TAG
from moviegen_dagster.tags import MAX_RUNTIME as MAX_RUNTIME_TAG

log = logging.getLogger("moviegen.launcher")

# `kill -USR2 <pid>` dumps every thread's stack to the process's log (a stuck daemon thread
# shows where it waits); registered wherever the launcher loads (daemon, webserver, API).
# Where stderr is no real file (a process whose stdio was redirected), there is nowhere to dump.
if hasattr(signal, "SIGUSR2"):
    with contextlib.suppress(AttributeError, ValueError, OSError):
        faulthandler.register(signal.SIGUSR2, all_threads=True, chain=True)

# About 25 s of publish retries before a launch fails (the run is then retried as a whole).
PUBLISH_RETRY_POLICY = {
    "max_retries": 10,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 3.0,
}

TIMED_OUT_TAG = tags.TIMED_OUT


def _queue_of(run: DagsterRun) -> str | None:
    """The worker type of the media asset a run materializes (runs the coordinator missed)."""
    from moviegen_dagster.coordinator import routing_tags, run_task_type

    task_type = run_task_type(run)
    return routing_tags(task_type)[DAGSTER_CELERY_QUEUE_TAG] if task_type else None


class MovieGenRunLauncher(CeleryRunLauncher):
    """Runs execute in long-lived Celery workers; one Redis queue per worker type."""

    def _launch_celery_task_run(
        self, run: DagsterRun, task_signature: Any, routing_key: str
    ) -> None:
        # The stock launcher routes to "<queue>.<task>", which no plain `-Q <queue>` worker
        # binds on Redis; route by the queue name itself.
        queue = run.tags.get(DAGSTER_CELERY_QUEUE_TAG) or _queue_of(run) or self.default_queue
        # Ride out a short broker outage (a Redis restart) instead of failing the launch.
        result = task_signature.apply_async(
            queue=queue, routing_key=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
        self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: result.task_id})
        self._instance.report_engine_event(
            f"Run sent to Celery queue {queue} (task {result.task_id}).", run, cls=self.__class__
        )

    def terminate(self, run_id: str) -> bool:
        """Report CANCELING first so the interrupted run ends CANCELED, not FAILURE.

        Run monitoring calls this too when a run exceeds `dagster/max_runtime` (the run is
        already CANCELING then): such a run is tagged as timed out and is not retried, so its
        task fails with a timeout error instead of being cancelled or run again.
        """
        run = self._instance.get_run_by_id(run_id)
        if run is None:
            return False
        limit = self._timeout_limit(run)
        if limit is not None:
            self._instance.add_run_tags(run_id, {TIMED_OUT_TAG: limit, MAX_RETRIES_TAG: "0"})
            log.warning("run %s exceeded its maximum runtime of %s s: stopping it", run_id, limit)
            if run.is_finished:
                # The worker saw CANCELING and ended the run as cancelled before this call:
                # returning True lets run monitoring record the timeout as the failure it is.
                return True
        elif run.is_finished:
            return False
        else:
            self._instance.report_run_canceling(run)
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id:
            # SIGTERM reaches the prefork child as an interrupt Dagster handles; the child
            # process (and the models it holds) survives, and its slot is free again.
            self.celery.AsyncResult(task_id).revoke(terminate=True)
        return True

    def _celery_state(self, run: DagsterRun) -> str | None:
        """The run's Celery task state, read from the result backend.

        A plain read of the stored state: AsyncResult objects would also join and leave the
        backend's shared pub/sub connection, which the run coordinator's thread uses to launch.
        """
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if not task_id:
            return None
        meta = self.celery.backend.get_task_meta(task_id, cache=False)
        return str(meta.get("status")) if meta else None

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        """Celery task id and state (from the result backend) for run-failure messages."""
        try:
            state = self._celery_state(run)
        except Exception as exc:
            state = f"unknown ({exc})"
        return f"celery task {run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)}: {state}"

    def _timeout_limit(self, run: DagsterRun) -> str | None:
        """The max runtime (seconds) if run monitoring is stopping this run for exceeding it."""
        if run.status not in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
            return None
        records = self._instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_CANCELING, ascending=False, limit=1
        ).records
        message = records[0].event_log_entry.message if records else ""
        if "maximum runtime" not in (message or ""):
            return None
        return run.tags.get(MAX_RUNTIME_TAG, "?")

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Celery alone reports a dead worker's task as STARTED forever: consult heartbeats.

        A killed prefork child is seen at once (Celery records its task as failed); a killed
        worker, whose task Celery never closes, once its slot has been silent for
        MOVIEGEN_WORKER_DEAD_AFTER_SECONDS.
        """
        settings = get_settings()
        try:
            celery_state = self._celery_state(run)
        except Exception as exc:  # broker/backend down: judge by heartbeats alone
            log.warning("celery state of run %s unavailable: %s", run.run_id, exc)
            celery_state = None
        if celery_state in ("FAILURE", "REVOKED"):
            # Only STARTED runs are checked, so a revoked task here was not cancelled: Celery
            # records a task whose prefork child was killed as failed or revoked.
            log.warning(
                "run %s: its Celery task is %s (worker process lost)", run.run_id, celery_state
            )
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                "the worker process running this task died (Celery task failed)",
            )
        with psycopg.connect(settings.require_database_url(), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT EXTRACT(EPOCH FROM now() - last_heartbeat), worker_id "
                "FROM moviegen.workers "
                "WHERE current_run_id = %s ORDER BY last_heartbeat DESC LIMIT 1",
                (run.run_id,),
            ).fetchone()
        if row is not None:
            age = float(row[0])
            if age > settings.worker_dead_after_seconds:
                log.warning(
                    "run %s: worker %s silent for %.1f s (limit %.0f s): failing the run",
                    run.run_id,
                    row[1],
                    age,
                    settings.worker_dead_after_seconds,
                )
                return CheckRunHealthResult(
                    WorkerStatus.FAILED,
                    f"worker stopped heartbeating {age:.0f}s ago while running this task",
                )
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if celery_state is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        health = {
            "SUCCESS": CheckRunHealthResult(WorkerStatus.SUCCESS),
            "STARTED": CheckRunHealthResult(WorkerStatus.RUNNING),
        }.get(celery_state, CheckRunHealthResult(WorkerStatus.UNKNOWN, celery_state))
        record = self._instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record is not None else None
        if (
            health.status in (WorkerStatus.RUNNING, WorkerStatus.SUCCESS, WorkerStatus.UNKNOWN)
            and started is not None
            and time.time() - started > 2 * settings.worker_dead_after_seconds
        ):
            # Started long ago, yet no live worker slot claims it: its worker is gone (or its
            # Celery task ended without the run recording an end).
            log.warning("run %s: no live worker slot claims it: failing the run", run.run_id)
            return CheckRunHealthResult(WorkerStatus.FAILED, "no live worker is running this task")
        if health.status == WorkerStatus.UNKNOWN:
            # PENDING: the task state is not recorded yet (or Redis lost it); give it time.
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return health
