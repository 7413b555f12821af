"""This worker process's identity, so ops can say which run it is executing (heartbeats)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("moviegen.worker")


@dataclass
class WorkerSlot:
    """One prefork child: the unit that holds models and runs one task at a time."""

    worker_id: str
    worker_type: str
    current_task_id: str | None = None
    current_run_id: str | None = None
    tasks_completed: int = 0


# Set by the Celery worker's process-init hook; None when ops run elsewhere (tests, CLI).
current: WorkerSlot | None = None
# Publishes the slot at once on claim/release, so a dead worker's run is attributable.
on_change: Callable[[], None] | None = None


def _publish() -> None:
    if on_change is None:
        return
    try:
        on_change()
    except Exception as exc:
        # Best effort: the heartbeat thread publishes the same state on its next beat, and a
        # database outage must not fail the run that claims or releases the slot.
        log.warning("could not publish the slot's state now: %s", exc)


def claim_run(run_id: str) -> None:
    """Mark this slot busy with a run as soon as its Celery task starts (before the op)."""
    if current is not None and current.current_run_id != run_id:
        current.current_task_id = None
        current.current_run_id = run_id
        _publish()


def claim(task_id: str, run_id: str) -> None:
    """Mark this slot busy with a run (the heartbeat thread publishes it)."""
    if current is not None:
        current.current_task_id = task_id
        current.current_run_id = run_id
        _publish()


def release(completed: bool) -> None:
    """The op is done with its task; the run stays claimed until its Celery task ends."""
    if current is not None:
        current.current_task_id = None
        if completed:
            current.tasks_completed += 1
        if current.current_run_id is None:
            return
        _publish()


def release_run() -> None:
    """Mark this slot idle again (its Celery task ended)."""
    if current is not None and (current.current_run_id or current.current_task_id):
        current.current_task_id = None
        current.current_run_id = None
        _publish()
