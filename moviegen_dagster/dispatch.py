"""Turning tasks into Dagster runs and Dagster run state back into task status."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import httpx
import psycopg
import redis
from psycopg_pool import PoolTimeout

from moviegen_dagster import limits, store, tags
from moviegen_dagster.db import DictPool
from moviegen_dagster.settings import WORKER_TYPE_BY_TASK, Settings
from moviegen_dagster.status import TaskStatus

log = logging.getLogger("moviegen.dispatch")

LOCATION = "moviegen"
# How long the API's reads of Dagster's storage wait for an unreachable database.
API_DB_PATIENCE_S = 5.0
# How long a failed run may stay without Dagster's retry decision before it counts as final.
RETRY_DECISION_GRACE_S = 30.0
REPOSITORY = "__repository__"

# The webserver's GraphQL mutations, as the Dagster UI sends them.
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""

REEXECUTE_RUN = """
mutation Reexecute($parent: String!, $strategy: ReexecutionStrategy!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: $strategy}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on Error { message }
  }
}"""

_TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
    ... on Error { message }
  }
}"""


class Conflict(Exception):
    """The task's state does not allow the operation (HTTP 409)."""


class Unavailable(Exception):
    """A backing service is down; the request may be retried later (HTTP 503)."""


def run_tags(row: store.Row, settings: Settings) -> dict[str, str]:
    """Tags that make a task's run: identity, partition, queue, priority, limits."""
    worker_type = WORKER_TYPE_BY_TASK[row["task_type"]]
    return {
        tags.TASK_ID: str(row["task_id"]),
        tags.PROJECT_ID: row["project_id"],
        tags.TASK_TYPE: row["task_type"],
        tags.WORKER_TYPE: worker_type,
        tags.CELERY_QUEUE: worker_type,
        tags.PRIORITY: str(tags.dagster_priority(int(row["priority"]))),
        tags.PARTITION: row["partition_key"],
        tags.MAX_RETRIES: str(settings.run_max_retries),
        tags.MAX_RUNTIME: str(settings.max_runtime_for(row["task_type"])),
    }


def latest_run(instance: Any, row: store.Row) -> Any:
    """The newest Dagster run carrying this task (retries and re-executions included).

    The common case is one primary-key lookup of the recorded run; the tag query (which
    finds automatic retries and runs the API never recorded) runs only when that run was
    replaced or is unknown.
    """
    from dagster import RunsFilter

    run = instance.get_run_by_id(row["run_id"]) if row.get("run_id") else None
    if run is not None and not (
        run.status.value == "FAILURE" and run.tags.get(tags.WILL_RETRY) == "true"
    ):
        return run
    runs = instance.get_runs(RunsFilter(tags={tags.TASK_ID: str(row["task_id"])}), limit=1)
    return runs[0] if runs else run


def _failure_message(instance: Any, run_id: str) -> str:
    from dagster import DagsterEventType

    for etype in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=etype, limit=1).records
        if records:
            entry = records[0].event_log_entry
            data = entry.dagster_event.event_specific_data if entry.dagster_event else None
            err = getattr(data, "error", None)
            if err is not None and getattr(err, "message", None):
                return str(err.message).strip().splitlines()[0][:500]
            if entry.message:
                return str(entry.message)[:500]
    return "the run failed"


# A run still NOT_STARTED this long after it was created was never queued: the webserver's
# launchRun created it and then failed (e.g. its first query after a database restart).
STRANDED_AFTER_S = 10.0


def _queue_stranded(conn: psycopg.Connection[Any], instance: Any, row: store.Row, run: Any) -> None:
    """Queue a run that was created but never submitted, instead of waiting out the start
    timeout (which would then fail and retry it)."""
    from dagster._core.events import DagsterEvent
    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return
    record = instance.get_run_record_by_id(run.run_id)
    if record is None or time.time() - record.create_timestamp.timestamp() < STRANDED_AFTER_S:
        return
    # One submitter per task: a concurrent caller waits here, then finds the run queued.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"queue:{run.run_id}",))
    fresh = instance.get_run_by_id(run.run_id)
    if fresh is not None and fresh.status.value == "NOT_STARTED":
        log.warning("run %s of task %s was never queued: queueing it", run.run_id, row["task_id"])
        # What QueuedRunCoordinator.submit_run does: the daemon's queue takes it from here.
        instance.report_dagster_event(DagsterEvent.job_enqueue(fresh), run_id=fresh.run_id)


def _timeout_from_events(instance: Any, run: Any) -> str | None:
    """The max runtime if the run's cancellation came from run monitoring's runtime limit."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_CANCELING, ascending=False, limit=1
    ).records
    message = records[0].event_log_entry.message if records else ""
    if "maximum runtime" not in (message or ""):
        return None
    return str(run.tags.get(tags.MAX_RUNTIME, "?"))


def sync_task(conn: psycopg.Connection[Any], instance: Any, row: store.Row) -> store.Row:
    """Mirror the task's newest run onto its row (the only writer of run-derived status)."""
    if row["status"] in store.TERMINAL or not row.get("run_id"):
        return row
    run = latest_run(instance, row)
    if run is None:
        return row
    if run.status.value == "NOT_STARTED":
        _queue_stranded(conn, instance, row, run)
        return row
    timed_out = run.tags.get(tags.TIMED_OUT)
    if timed_out is None and run.status.value in ("CANCELING", "CANCELED"):
        # Run monitoring tags a timed-out run just after asking it to stop; the run may have
        # ended before the tag landed, but its canceling event already says why.
        timed_out = _timeout_from_events(instance, run)
    if timed_out is not None and run.status.value in ("CANCELING", "CANCELED", "FAILURE"):
        # Run monitoring stopped the run for exceeding its maximum runtime: a failure, never
        # a cancellation, whichever of the worker and the daemon recorded the end first.
        return _apply_failure(
            conn,
            row,
            run,
            {
                "code": "timeout",
                "message": f"the task exceeded its maximum runtime of {timed_out} s "
                "and was stopped",
            },
            replace_error=True,
        )
    if run.status.value == "CANCELING":
        # Only a cancellation through the API (recorded there at once) or the Dagster UI gets
        # here; wait for the run to end rather than guess.
        return row
    if run.status.value == "FAILURE" and tags.WILL_RETRY not in run.tags:
        # Dagster tags a failed run with its retry decision just after recording the failure;
        # until then the outcome is undecided, and a terminal status must not be guessed.
        record = instance.get_run_record_by_id(run.run_id)
        ended = record.end_time if record is not None else None
        if ended is None or time.time() - ended < RETRY_DECISION_GRACE_S:
            return row
    will_retry = run.tags.get(tags.WILL_RETRY) == "true"
    status = store.run_to_task_status(run.status.value, will_retry)
    attempt = max(int(row["attempt"]), int(run.tags.get(tags.RETRY_NUMBER, "0")) + 1)
    if status == row["status"] and run.run_id == row["run_id"] and attempt == row["attempt"]:
        return row
    error = None
    if run.status.value == "FAILURE":
        message = _failure_message(instance, run.run_id)
        # The attempt a lost worker or a failed run left open ends with the run's reason.
        store.close_run_attempts(conn, row["task_id"], run.run_id, message)
        if status == "failed":
            error = {"code": "run_failed", "message": message}
    new = store.apply_run_state(conn, row["task_id"], run.run_id, status, attempt, error)
    if new is not None:
        enqueue_callback(conn, new)
    conn.commit()
    return new or row


def _apply_failure(
    conn: psycopg.Connection[Any],
    row: store.Row,
    run: Any,
    error: dict[str, Any],
    replace_error: bool,
) -> store.Row:
    """Fail the task with this error (terminal), closing the run's open attempts."""
    store.close_run_attempts(conn, row["task_id"], run.run_id, str(error["message"]))
    if replace_error:
        conn.execute(
            "UPDATE moviegen.tasks SET error = NULL WHERE task_id = %s AND status = ANY(%s)",
            (row["task_id"], list(store.OPEN)),
        )
    attempt = max(int(row["attempt"]), int(run.tags.get(tags.RETRY_NUMBER, "0")) + 1)
    new = store.apply_run_state(conn, row["task_id"], run.run_id, "failed", attempt, error)
    if new is not None:
        enqueue_callback(conn, new)
    conn.commit()
    return new or row


def enqueue_callback(conn: psycopg.Connection[Any], row: store.Row) -> None:
    """Queue the terminal event of a task that just became terminal (same transaction)."""
    from moviegen_dagster.webhooks import enqueue_terminal_event

    if row["status"] in store.TERMINAL and row.get("callback_url"):
        enqueue_terminal_event(conn, row, TaskStatus.from_row(row).model_dump(mode="json"))


class Dispatcher:
    """The API's and sensors' one door into Dagster."""

    def __init__(self, settings: Settings, pool: DictPool) -> None:
        self.settings = settings
        self.pool = pool
        self._http = httpx.Client(base_url=settings.dagster_url, timeout=10.0)
        self._instance: Any = None
        self._redis = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=2)

    @property
    def instance(self) -> Any:
        """The Dagster instance (DAGSTER_HOME), opened on first use."""
        if self._instance is None:
            from dagster import DagsterInstance

            from moviegen_dagster.pg_storage import limit_patience

            instance = DagsterInstance.get()
            # The same bound as the API's own pool checkout: a request during an outage gets
            # its 503 in seconds, as on every other route.
            limit_patience(instance, API_DB_PATIENCE_S)
            self._instance = instance
        return self._instance

    def close(self) -> None:
        """Release connections."""
        self._http.close()
        if self._instance is not None:
            self._instance.dispose()

    # -- GraphQL -----------------------------------------------------------------------
    def graphql(self, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
        """One request to dagster-webserver's GraphQL API; the named field of its data."""
        resp = self._http.post("/graphql", json={"query": query, "variables": variables})
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL error: {body['errors'][0].get('message')}")
        result: dict[str, Any] = body["data"][field]
        return result

    def launch_run(self, row: store.Row) -> str:
        """Launch the task's run through dagster-webserver's GraphQL API (the fast path)."""
        self.ensure_partition(row["partition_key"])
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": row["task_type"],
            },
            "runConfigData": {},
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in run_tags(row, self.settings).items()]
            },
        }
        result = self.graphql(LAUNCH_RUN, {"params": params}, "launchRun")
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun: {result['__typename']}: {result.get('message')}")
        return str(result["run"]["runId"])

    def ensure_partition(self, key: str) -> None:
        """Register the project/scene partition before any run targets it."""
        if not self.instance.has_dynamic_partition("scenes", key):
            self.instance.add_dynamic_partitions("scenes", [key])

    # -- task operations -------------------------------------------------------------
    def submit(
        self, new: store.NewTask, admission: limits.Admission | None = None
    ) -> limits.Admitted:
        """Commit the task, then launch its run; a failed launch is left to the reconciler.

        Admission (idempotency key, rate limit, queue cap) is decided in the transaction that
        inserts the task, so the task and its key are committed together or not at all.
        """
        try:
            with self.pool.connection() as conn:
                units = store.work_units(new.task_type, new.task_data)
                estimated = store.estimate_duration(conn, new.task_type, units)
                admitted = limits.admit_and_insert(conn, new, estimated, admission)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable("database unavailable") from exc
        if admitted.replayed:
            # The first request launched it, or died before (or while) launching: then a run
            # may exist that only the reconciler's tag lookup adopts, so launch nothing here.
            return admitted
        row = admitted.row
        # The task is durable from here on; everything below is best effort.
        try:
            with self.pool.connection() as conn:
                locked = store.get_task(conn, row["task_id"], None, for_update=True)
                if locked is not None and locked["run_id"] is None and locked["status"] == "queued":
                    run_id = self.launch_run(locked)
                    store.set_run(conn, row["task_id"], run_id)
                    row = {**row, "run_id": run_id}
        except Exception:
            log.warning(
                "fast launch of task %s failed; the reconcile sensor will launch it",
                row["task_id"],
                exc_info=True,
            )
        return dataclasses.replace(admitted, row=row)

    def status(self, row: store.Row) -> store.Row:
        """The task refreshed from Dagster."""
        if row["status"] in store.TERMINAL or not row.get("run_id"):
            return row
        with self.pool.connection() as conn:
            return sync_task(conn, self.instance, row)

    def cancel(self, row: store.Row) -> store.Row:
        """Cancel a queued or processing task; cancelling a cancelled task is harmless."""
        with self.pool.connection() as conn:
            locked = store.get_task(conn, row["task_id"], None, for_update=True)
            assert locked is not None
            locked = sync_task(conn, self.instance, locked) if locked["run_id"] else locked
            if locked["status"] == "cancelled":
                return locked
            if locked["status"] in ("completed", "failed"):
                raise Conflict(f"task is already {locked['status']} and cannot be cancelled")
            if locked["run_id"] is None:
                cancelled = store.cancel_unlaunched(conn, locked["task_id"])
                if cancelled is not None:
                    enqueue_callback(conn, cancelled)
                conn.commit()
                return cancelled or locked
            result = self.graphql(_TERMINATE, {"runId": locked["run_id"]}, "terminateRun")
            if result["__typename"] not in ("TerminateRunSuccess",):
                log.warning("terminateRun %s: %s", locked["run_id"], result)
            new = store.apply_run_state(
                conn, locked["task_id"], locked["run_id"], "cancelled", int(locked["attempt"]), None
            )
            if new is not None:
                enqueue_callback(conn, new)
            conn.commit()
            return new or locked

    def retry(self, row: store.Row) -> store.Row:
        """Re-execute a failed task's run from the failed step, under the same task id."""
        with self.pool.connection() as conn:
            locked = store.get_task(conn, row["task_id"], None, for_update=True)
            assert locked is not None
            if locked["status"] != "failed":
                raise Conflict(f"only failed tasks can be retried; this one is {locked['status']}")
            if locked["run_id"] is None:
                raise Conflict("the task never ran, so there is nothing to retry")
            result = self.graphql(
                REEXECUTE_RUN,
                {"parent": locked["run_id"], "strategy": "FROM_FAILURE"},
                "launchRunReexecution",
            )
            if result["__typename"] != "LaunchRunSuccess":
                raise Unavailable(f"could not launch the retry: {result.get('message')}")
            reopened = store.reopen_for_retry(conn, locked["task_id"])
            assert reopened is not None
            store.set_run(conn, locked["task_id"], result["run"]["runId"])
            return {**reopened, "run_id": result["run"]["runId"]}

    # -- system ----------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        """healthy / degraded / unhealthy per component."""
        out: dict[str, str] = {}
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            out["database"] = "healthy"
        except Exception:
            out["database"] = "unhealthy"
        try:
            self._redis.ping()
            out["broker"] = "healthy"
        except Exception:
            out["broker"] = "degraded"
        out["daemon"] = self._daemon_health() if out["database"] == "healthy" else "degraded"
        out["workers"] = (
            "healthy" if out["database"] == "healthy" and self._live_workers() else "degraded"
        )
        return out

    def _daemon_health(self) -> str:
        """Healthy while every daemon this instance requires heartbeats on time."""
        from dagster._daemon.controller import all_daemons_live

        try:
            return "healthy" if all_daemons_live(self.instance) else "degraded"
        except Exception:
            return "degraded"

    def _live_workers(self) -> int:
        with self.pool.connection(timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM moviegen.workers "
                "WHERE last_heartbeat > now() - make_interval(secs => %s)",
                (self.settings.worker_dead_after_seconds,),
            ).fetchone()
        return int(row["n"]) if row else 0

    def workers(self) -> list[dict[str, Any]]:
        """Workers seen recently, with the project of the task each one is running."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                """
                SELECT w.worker_id, w.worker_type, w.status, w.current_task_id,
                       t.project_id AS project_id_of_current_task, w.gpu_utilization,
                       w.memory_usage, w.tasks_completed, w.last_heartbeat,
                       w.last_heartbeat > now() - make_interval(secs => %s) AS alive
                FROM moviegen.workers w
                LEFT JOIN moviegen.tasks t ON t.task_id = w.current_task_id
                WHERE w.last_heartbeat > now() - interval '10 minutes'
                ORDER BY w.worker_type, w.worker_id
                """,
                (self.settings.worker_dead_after_seconds,),
            ).fetchall()
        out = []
        for r in rows:
            alive = r.pop("alive")
            if not alive:
                r["status"] = "offline"
                r["current_task_id"] = None
                r["project_id_of_current_task"] = None
            out.append(r)
        return out
