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
)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)

WORKER_TYPE = os.environ.get("MOVIEGEN_WORKER_TYPE", "gpu_light")


class Heartbeat:
    """Publishes this slot's state every few seconds; exits if its parent worker died."""

    def __init__(self, slot: worker_state.WorkerSlot, interval: float) -> None:
        self.slot = slot
        self.interval = interval
        self.parent = os.getppid()
        self._lock = threading.Lock()
        self._stop = threading.Event()

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
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    def publish(self) -> None:
        """Upsert this slot's row in moviegen.workers."""
        s = self.slot
        gpu_util, mem = _resource_usage()
        with self._lock, psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
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
