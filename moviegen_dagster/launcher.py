"""dagster-celery's run launcher, fixed for cancellation, per-type queues and dead workers."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from dagster import DagsterRun
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_TASK_ID_TAG

from moviegen_dagster.settings import get_settings


class MovieGenRunLauncher(CeleryRunLauncher):
    """Runs execute in long-lived Celery workers; one Redis queue per worker type."""

    def _launch_celery_task_run(
        self, run: DagsterRun, task_signature: Any, routing_key: str
    ) -> None:
        # The stock launcher routes to "<queue>.<task>", which no plain `-Q <queue>` worker
        # binds on Redis; route by the queue name itself.
        queue = run.tags.get(DAGSTER_CELERY_QUEUE_TAG, self.default_queue)
        result = task_signature.apply_async(queue=queue, routing_key=queue)
        self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: result.task_id})
        self._instance.report_engine_event(
            f"Run sent to Celery queue {queue} (task {result.task_id}).", run, cls=self.__class__
        )

    def terminate(self, run_id: str) -> bool:
        """Report CANCELING first so the interrupted run ends CANCELED, not FAILURE."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id:
            # SIGTERM reaches the prefork child as an interrupt Dagster handles; the child
            # process (and the models it holds) survives.
            self.celery.AsyncResult(task_id).revoke(terminate=True)
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Celery alone reports a dead worker's task as STARTED forever: consult heartbeats."""
        settings = get_settings()
        with psycopg.connect(settings.require_database_url()) as conn:
            row = conn.execute(
                "SELECT EXTRACT(EPOCH FROM now() - last_heartbeat) FROM moviegen.workers "
                "WHERE current_run_id = %s ORDER BY last_heartbeat DESC LIMIT 1",
                (run.run_id,),
            ).fetchone()
        if row is not None:
            age = float(row[0])
            if age > settings.worker_dead_after_seconds:
                return CheckRunHealthResult(
                    WorkerStatus.FAILED,
                    f"worker stopped heartbeating {age:.0f}s ago while running this task",
                )
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        health = super().check_run_worker_health(run)
        record = self._instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record is not None else None
        if (
            health.status == WorkerStatus.RUNNING
            and started is not None
            and time.time() - started > 2 * settings.worker_dead_after_seconds
        ):
            # Started long ago, yet no live worker slot claims it: its worker is gone.
            return CheckRunHealthResult(WorkerStatus.FAILED, "no live worker is running this task")
        return health
