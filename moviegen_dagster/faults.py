"""Fault injection for tests, configured by MOVIEGEN_FAULT_INJECTION; inert when unset.

Format: comma-separated `stage:mode` entries. Only tasks whose task_data mentions the word
FAULT are affected, so one test can break one task while others run normally. Modes:
`always` fails every attempt; `first_attempt` fails only the task's first attempt (a retry
then succeeds).
"""

from __future__ import annotations

import json
import os
from typing import Any


class InjectedFault(RuntimeError):
    """A failure injected on purpose by a test."""


def maybe_inject(task: dict[str, Any], stage: str) -> None:
    """Raise InjectedFault when the environment asks for one at this stage for this task."""
    spec = os.environ.get("MOVIEGEN_FAULT_INJECTION", "")
    if not spec or "FAULT" not in json.dumps(task.get("task_data", {})):
        return
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        where, _, mode = entry.partition(":")
        if where != stage:
            continue
        if mode == "always" or (mode == "first_attempt" and int(task.get("attempt", 1)) == 1):
            raise InjectedFault(f"injected fault at {stage} ({mode})")
