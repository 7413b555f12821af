"""This worker process's identity, so ops can say which run it is executing (heartbeats)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
    if on_change is not None:
        on_change()


def claim(task_id: str, run_id: str) -> None:
    """Mark this slot busy with a run (the heartbeat thread publishes it)."""
    if current is not None:
        current.current_task_id = task_id
        current.current_run_id = run_id
        _publish()


def release(completed: bool) -> None:
    """Mark this slot idle again."""
    if current is not None:
        current.current_task_id = None
        current.current_run_id = None
        if completed:
            current.tasks_completed += 1
        _publish()
