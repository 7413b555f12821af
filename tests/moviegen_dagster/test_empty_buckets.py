"""The API process's memory of empty rate-limit buckets: exact, and never in the way."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from moviegen_dagster import idempotency
from moviegen_dagster.limits import Admission, EmptyBuckets, RateLimited

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = Admission(now=T0, rate_per_minute=6, burst=1)


def _refused(memory: EmptyBuckets, wait_s: float = 10.0) -> None:
    memory.remember("p1", LIMITS, RateLimited("project 'p1' is over its submit rate limit", wait_s))


def test_refuses_until_the_bucket_holds_a_token_again() -> None:
    memory = EmptyBuckets()
    _refused(memory)
    with pytest.raises(RateLimited) as refused:
        memory.check("p1", replace(LIMITS, now=T0 + timedelta(seconds=7.5)))
    assert refused.value.retry_after == 3 and refused.value.wait_s == pytest.approx(2.5)
    memory.check("p2", LIMITS)  # other projects are unaffected
    memory.check("p1", replace(LIMITS, now=T0 + timedelta(seconds=10)))  # a token is due
    memory.check("p1", LIMITS)  # ...and the entry is gone: the database decides again


@pytest.mark.parametrize(
    "admission",
    [
        # An Idempotency-Key may be the replay of an accepted task.
        replace(LIMITS, claim=idempotency.Claim("k", "h", timedelta(hours=1))),
        replace(LIMITS, rate_per_minute=0),  # limits switched off
        replace(LIMITS, rate_per_minute=60),  # limits changed: the old wait no longer holds
        replace(LIMITS, burst=5),
    ],
)
def test_leaves_the_decision_to_the_database(admission: Admission) -> None:
    memory = EmptyBuckets()
    _refused(memory)
    memory.check("p1", admission)


def test_memory_is_bounded() -> None:
    memory = EmptyBuckets(max_projects=2)
    for project in ("a", "b", "c"):
        memory.remember(project, LIMITS, RateLimited("over", 10.0))
    memory.check("a", LIMITS)  # forgotten when the bound was reached
    with pytest.raises(RateLimited):
        memory.check("c", LIMITS)
