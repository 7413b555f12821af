"""The patient connect loop behind Dagster's storage (the outage itself is in tests/reliability)."""

from __future__ import annotations

import pytest
import sqlalchemy
from dagster_postgres.utils import DagsterPostgresException

from moviegen_dagster.pg_storage import connect_patiently


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refused() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))


def test_connects_once_the_database_answers_again() -> None:
    clock, calls = FakeClock(), []

    def connect() -> str:
        calls.append(clock.now)
        if len(calls) < 6:
            raise refused()
        return "conn"

    assert connect_patiently(connect, 60, clock, clock.sleep) == "conn"
    assert len(calls) == 6
    # Backoff grows (with jitter) and is capped.
    assert clock.sleeps[0] < clock.sleeps[3] <= 2.0 * 1.25


def test_gives_up_after_its_patience_naming_the_outage() -> None:
    clock = FakeClock()

    def connect() -> str:
        raise refused()

    with pytest.raises(DagsterPostgresException, match="unreachable for 5 s"):
        connect_patiently(connect, 5, clock, clock.sleep)
    assert 5.0 <= clock.now - 100.0 <= 5.0 + 1e-9


def test_other_errors_are_not_retried() -> None:
    clock = FakeClock()

    def connect() -> str:
        raise ValueError("bad url")

    with pytest.raises(ValueError):
        connect_patiently(connect, 60, clock, clock.sleep)
    assert clock.sleeps == []


def test_api_processes_wait_less() -> None:
    from types import SimpleNamespace

    from moviegen_dagster.pg_storage import (
        PatientEventLogStorage,
        PatientRunStorage,
        limit_patience,
    )

    runs = object.__new__(PatientRunStorage)
    events = object.__new__(PatientEventLogStorage)
    events.connect_patience_s = 2.0  # already below the limit: kept
    limit_patience(SimpleNamespace(run_storage=runs, event_log_storage=events), 5.0)
    assert (runs.connect_patience_s, events.connect_patience_s) == (5.0, 2.0)
    assert PatientRunStorage.connect_patience_s == 60.0  # the class default is untouched
