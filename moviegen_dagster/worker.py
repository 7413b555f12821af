"""The Celery app of the generation workers: executes Dagster runs in long-lived processes.

Start one worker per worker type, e.g.
`celery -A moviegen_dagster.worker worker -Q gpu_light --pool=prefork --concurrency=2`;
each prefork child is one slot that keeps its loaded models across runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg
from celery import Celery, signals
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from moviegen_dagster import worker_state
from moviegen_dagster.settings import get_settings

log = logging.getLogger("moviegen.worker")

settings = get_settings()
app = Celery("moviegen", broker=settings.redis_url, backend=settings.redis_url)
app.conf.update(
    worker_prefetch_multiplier=1,  # a slot takes one run at a time; the rest wait in Dagster
    task_track_started=True,
    worker_redirect_stdouts=False,  # else every Dagster event is logged again as a WARNING
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=24 * 3600,
    # Redis may restart under a running task: retry the result-backend writes (the STARTED
    # and final states) with back-off for about a minute instead of failing the task before
    # or after its body ran. Run state lives in PostgreSQL; these writes are bookkeeping.
    result_backend_always_retry=True,
    result_backend_max_retries=20,
    result_backend_base_sleep_between_retries_ms=250,
    result_backend_max_sleep_between_retries_ms=5000,
    # A killed slot's task is recorded as failed after this wait (default 10 s), which is what
    # lets run monitoring fail its run without waiting for the heartbeat to go stale.
    worker_lost_wait=1.0,
)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)

WORKER_TYPE = os.environ.get("MOVIEGEN_WORKER_TYPE", "gpu_light")


@signals.celeryd_init.connect
def _early_logging(**_: Any) -> None:
    """Configure logging before Celery's own start-up checks warn (they use `warnings`)."""
    from moviegen_dagster.logs import configure_logging

    configure_logging(f"worker-{WORKER_TYPE}", settings)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Celery leaves logging to MovieGen: one handler (JSON or text) with task and run ids."""
    from moviegen_dagster.logs import configure_logging, redirect_stdio

    configure_logging(f"worker-{WORKER_TYPE}", settings)
    if settings.log_format == "json":
        # What others print (each run's Dagster console log, progress bars) becomes records
        # carrying the slot's task and run ids instead of raw lines between the JSON ones.
        redirect_stdio("moviegen.worker.stdio")


class Heartbeat:
    """Publishes this slot's state every few seconds; exits if its parent worker died."""

    def __init__(self, slot: worker_state.WorkerSlot, interval: float) -> None:
        self.slot = slot
        self.interval = interval
        self.parent = os.getppid()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failing_since: float | None = None

    def start(self) -> None:
        """Publish once now, then from a daemon thread."""
        self.publish()
        threading.Thread(target=self._loop, name="moviegen-heartbeat", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != self.parent:
                # The worker's main process is gone (SIGKILL): a slot without it must not
                # keep heartbeating for a run nobody will finish.
                os._exit(1)
            try:
                self.publish()
                if self._failing_since is not None:
                    log.info(
                        "heartbeat restored after %.1f s",
                        time.monotonic() - self._failing_since,
                    )
                    self._failing_since = None
            except Exception as exc:
                # Keep beating through a database outage: the thread must outlive it.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("heartbeat failed (will keep trying): %s", exc)

    def publish(self) -> None:
        """Upsert this slot's row in moviegen.workers."""
        s = self.slot
        gpu_util, mem = _resource_usage()
        with (
            self._lock,
            psycopg.connect(
                settings.require_database_url(), autocommit=True, connect_timeout=5
            ) as conn,
        ):
            conn.execute(
                """
                INSERT INTO moviegen.workers (worker_id, worker_type, hostname, pid, status,
                    current_task_id, current_run_id, tasks_completed, gpu_utilization,
                    memory_usage, last_heartbeat)
                VALUES (%(id)s, %(type)s, %(host)s, %(pid)s, %(status)s, %(task)s, %(run)s,
                    %(done)s, %(gpu)s, %(mem)s, now())
                ON CONFLICT (worker_id) DO UPDATE SET worker_type = EXCLUDED.worker_type,
                    hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, status = EXCLUDED.status,
                    current_task_id = EXCLUDED.current_task_id,
                    current_run_id = EXCLUDED.current_run_id,
                    tasks_completed = EXCLUDED.tasks_completed,
                    gpu_utilization = EXCLUDED.gpu_utilization,
                    memory_usage = EXCLUDED.memory_usage, last_heartbeat = now()
                """,
                {
                    "id": s.worker_id,
                    "type": s.worker_type,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "status": "busy" if s.current_run_id else "idle",
                    "task": s.current_task_id,
                    "run": s.current_run_id,
                    "done": s.tasks_completed,
                    "gpu": gpu_util,
                    "mem": mem,
                },
            )


def _resource_usage() -> tuple[float | None, int | None]:
    """GPU utilisation (0-1) and GPU memory in use from NVML; process RSS without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(
            int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
        )
        util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        return util, used
    except Exception:
        pass
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return None, int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None, None


@signals.worker_init.connect
def _check_models(**_: Any) -> None:
    """Refuse to start a worker whose models do not resolve (no silent fallback)."""
    from moviegen_dagster.model_check import check_models

    for line in check_models(settings, WORKER_TYPE):
        log.info("model %s", line)


@signals.worker_process_init.connect
def _init_slot(**_: Any) -> None:
    """Each prefork child becomes one named slot with its own heartbeat."""
    # The pid makes a respawned slot a new worker: a killed slot's row, with the run it was
    # executing, stays behind as evidence for the health check instead of being overwritten.
    slot = worker_state.WorkerSlot(
        worker_id=f"{WORKER_TYPE}-{socket.gethostname()}-{os.getpid()}",
        worker_type=WORKER_TYPE,
    )
    beat = Heartbeat(slot, settings.heartbeat_seconds)
    worker_state.current = slot
    worker_state.on_change = beat.publish
    beat.start()


def _run_id_of(args: Any, kwargs: Any) -> str | None:
    """The Dagster run id a dagster-celery execute_job task carries."""
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import unpack_value

    packed = (kwargs or {}).get("execute_job_args_packed") or (args[0] if args else None)
    if packed is None:
        return None
    try:
        return str(unpack_value(packed, as_type=ExecuteRunArgs).run_id)
    except Exception:
        log.warning("could not read the run id of a Celery task", exc_info=True)
        return None


@signals.task_prerun.connect
def _claim_on_start(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    """Claim the slot for the run before Dagster starts it, so a kill at any point is seen."""
    if task is not None and task.name == execute_job.name:
        run_id = _run_id_of(args, kwargs)
        if run_id:
            log.info("slot starts run %s", run_id)
            worker_state.claim_run(run_id)


@signals.task_postrun.connect
def _release_on_end(task: Any = None, state: Any = None, **_: Any) -> None:
    """Free the slot when the Celery task ends, whatever the run's op did."""
    if task is not None and task.name == execute_job.name:
        log.info("slot finished its run (celery state %s)", state)
        worker_state.release_run()


# How long a worker keeps trying to record that it could not start a run (PostgreSQL down).
FAIL_UNSTARTED_WITHIN_S = 90.0


@signals.task_failure.connect
def _fail_unstarted_run(
    sender: Any = None, exception: Any = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    """A run whose Celery task failed before Dagster started it is failed now, not later.

    E.g. the database was unreachable when the task began: the run would stay STARTING, and
    hold its worker type's concurrency slot, until run monitoring's start timeout. Failing it
    here lets Dagster's run retries launch it again as soon as the database is back.
    """
    if sender is None or sender.name != execute_job.name:
        return
    run_id = _run_id_of(args, kwargs)
    if run_id:
        reason = f"{type(exception).__name__}: {exception}"
        # A thread: this may run in the worker's main process, which must keep consuming.
        threading.Thread(
            target=_report_unstarted, args=(run_id, reason), name="moviegen-fail-run", daemon=True
        ).start()


def _report_unstarted(run_id: str, reason: str) -> None:
    from dagster import DagsterInstance, DagsterRunStatus

    deadline = time.monotonic() + FAIL_UNSTARTED_WITHIN_S
    while True:
        try:
            with DagsterInstance.get() as instance:
                run = instance.get_run_by_id(run_id)
                if run is not None and run.status in (
                    DagsterRunStatus.STARTING,
                    DagsterRunStatus.NOT_STARTED,
                ):
                    log.warning(
                        "run %s could not start on this worker (%s): failing it", run_id, reason
                    )
                    instance.report_run_failed(
                        run, f"The worker could not start this run: {reason}"[:1000]
                    )
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                log.error("could not record that run %s failed to start: %s", run_id, exc)
                return
            time.sleep(2.0)
