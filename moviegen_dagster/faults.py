"""Fault injection for tests, switched on by MOVIEGEN_FAULT_INJECTION=1; inert otherwise.

Only tasks whose task_data carries a marker are affected, so one test can break one task
while the others run normally: `FAULT_ALWAYS` fails every attempt at generation, `FAULT_ONCE`
only the task's first attempt (a retry then succeeds); `FAULT_UPLOAD_ONCE` /
`FAULT_UPLOAD_ALWAYS` do the same at delivery.
"""

from __future__ import annotations

import json
import os
from typing import Any


class InjectedFault(RuntimeError):
    """A failure injected on purpose by a test."""


def maybe_inject(task: dict[str, Any], stage: str) -> None:
    """Raise InjectedFault at this stage when fault injection is on and the task is marked."""
    if os.environ.get("MOVIEGEN_FAULT_INJECTION") != "1":
        return
    data = json.dumps(task.get("task_data", {}))
    # FAULT_ONCE / FAULT_ALWAYS hit generation; FAULT_<STAGE>_ONCE / _ALWAYS hit another stage.
    prefix = "FAULT" if stage == "generate" else f"FAULT_{stage.upper()}"
    first = int(task.get("attempt", 1)) == 1
    if f"{prefix}_ALWAYS" in data or (f"{prefix}_ONCE" in data and first):
        raise InjectedFault(f"injected fault at {stage}")
