"""Retrying an operation while a backing service is briefly unreachable."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("moviegen.backoff")

T = TypeVar("T")

FIRST_WAIT_S = 0.2
MAX_WAIT_S = 2.0


def retry_while_unreachable(
    fn: Callable[[], T],
    transient: tuple[type[BaseException], ...],
    patience_s: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it succeeds; `transient` errors are retried with capped, jittered
    back-off until `patience_s` has passed since the first one, which is then re-raised."""
    deadline: float | None = None
    wait = FIRST_WAIT_S
    while True:
        try:
            return fn()
        except transient as exc:
            now = clock()
            deadline = now + patience_s if deadline is None else deadline
            if now >= deadline:
                raise
            log.warning("could not %s, retrying: %s", what, (str(exc).splitlines() or [""])[0])
        # Jitter keeps the processes that lost the same server from retrying in lockstep.
        sleep(min(wait * random.uniform(0.75, 1.25), max(0.0, deadline - clock())))
        wait = min(wait * 2, MAX_WAIT_S)
