"""Fault injection for tests, switched on by MOVIEGEN_FAULT_INJECTION=1; inert otherwise.

Only tasks whose task_data carries a marker are affected, so one test can break one task
while the others run normally:

- `FAULT_ALWAYS` / `FAULT_ONCE`: generation fails on every attempt / only the first;
- `FAULT_UPLOAD_ALWAYS` / `FAULT_UPLOAD_ONCE`: the same at delivery;
- `FAULT_OOM_ALWAYS` / `FAULT_OOM_TWICE`: a real `torch.cuda.OutOfMemoryError` in the
  generation step on every attempt / the first two;
- `FAULT_SLOW` / `FAULT_SLOW_ONCE`: the generation step stalls, in cancellable slices, on
  every attempt / the first;
- `FAULT_DB_LOST_ONCE`: the first run's step loses its database connection before it records
  an attempt (a real `psycopg.OperationalError`, as when PostgreSQL shuts down mid-query).

"Attempt" is the task's attempt number: op retries inside one run and run retries both count.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from moviegen_dagster.generation.errors import GenerationCancelled

# How long a FAULT_SLOW step stalls at most when nobody stops it.
SLOW_SECONDS = 600.0
SLOW_SLICE_SECONDS = 0.2


class InjectedFault(RuntimeError):
    """A failure injected on purpose by a test."""


def armed() -> bool:
    """Whether fault injection is switched on in this process."""
    return os.environ.get("MOVIEGEN_FAULT_INJECTION") == "1"


def _has(data: str, marker: str) -> bool:
    # Whole markers only: FAULT_SLOW must not match FAULT_SLOW_ONCE.
    return re.search(rf"(?<![A-Z0-9_]){marker}(?![A-Z0-9_])", data) is not None


def maybe_inject(
    task: dict[str, Any],
    stage: str,
    attempt: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Inject the task's marked fault at this stage when fault injection is on."""
    if not armed():
        return
    data = json.dumps(task.get("task_data", {}))
    n = int(attempt if attempt is not None else task.get("attempt", 1))
    # FAULT_ONCE / FAULT_ALWAYS hit generation; FAULT_<STAGE>_ONCE / _ALWAYS hit another stage.
    prefix = "FAULT" if stage == "generate" else f"FAULT_{stage.upper()}"
    if _has(data, f"{prefix}_ALWAYS") or (_has(data, f"{prefix}_ONCE") and n == 1):
        raise InjectedFault(f"injected fault at {stage}")
    if stage != "generate":
        return
    if _has(data, "FAULT_SLOW") or (_has(data, "FAULT_SLOW_ONCE") and n == 1):
        _stall(should_stop)
    if _has(data, "FAULT_OOM_ALWAYS") or (_has(data, "FAULT_OOM_TWICE") and n <= 2):
        raise out_of_memory(f"injected at attempt {n}")


def maybe_lose_database(task: dict[str, Any], run_attempt: int) -> None:
    """Lose the database connection at the start of the task's first run, when marked."""
    if (
        armed()
        and run_attempt == 1
        and _has(json.dumps(task.get("task_data", {})), "FAULT_DB_LOST_ONCE")
    ):
        import psycopg

        raise psycopg.OperationalError(
            "server closed the connection unexpectedly (injected fault: FAULT_DB_LOST_ONCE)"
        )


def out_of_memory(detail: str) -> BaseException:
    """A real torch.cuda.OutOfMemoryError, as the CUDA caching allocator raises it."""
    import torch

    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({detail})")


def _stall(should_stop: Callable[[], bool] | None) -> None:
    """Sleep in short slices, returning control as soon as the run is being stopped."""
    deadline = time.monotonic() + SLOW_SECONDS
    while time.monotonic() < deadline:
        if should_stop is not None and should_stop():
            raise GenerationCancelled("stopped while stalled by FAULT_SLOW")
        time.sleep(SLOW_SLICE_SECONDS)
