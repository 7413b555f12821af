"""Dagster's PostgreSQL storage, patient through a database restart.

dagster-postgres gives each connection five tries over about 6 s. A PostgreSQL restart or a
managed-database failover takes longer, and a run step that starts inside that window fails
before its op runs: Dagster reads the step's input data versions first. That failure is a
framework step failure, which run retries (`retry_on_asset_or_op_failure: false`) do not
cover, so the task would end `failed` although nothing was wrong with it.

These classes keep trying to connect for `connect_patience_seconds` (capped exponential
backoff with jitter), and have the webserver test its held connection at checkout, so its
first query after a restart does not answer 500. Everything else is dagster-postgres.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar, cast

import sqlalchemy
from dagster import Field
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    DagsterPostgresException,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy.engine import Connection

from moviegen_dagster.backoff import retry_while_unreachable

T = TypeVar("T")

DEFAULT_PATIENCE_S = 60.0
# What a refused, reset or timed-out connection raises through SQLAlchemy.
_TRANSIENT = (
    sqlalchemy.exc.DatabaseError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.TimeoutError,
)


def connect_patiently(
    connect: Callable[[], T],
    patience_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `connect` until it succeeds or `patience_s` has passed since the first failure."""
    try:
        return retry_while_unreachable(
            connect, _TRANSIENT, patience_s, "reach the database", clock, sleep
        )
    except _TRANSIENT as exc:
        raise DagsterPostgresException(f"database unreachable for {patience_s:g} s: {exc}") from exc


@contextmanager
def patient_connection(engine: sqlalchemy.engine.Engine, patience_s: float) -> Iterator[Connection]:
    """A connection from `engine`, waiting out an outage of up to `patience_s`."""
    conn = connect_patiently(engine.connect, patience_s)
    try:
        yield conn
    finally:
        conn.close()


class _Patient:
    """What the three storages share: patient connections, and a webserver pool that pings."""

    _engine: sqlalchemy.engine.Engine
    connect_patience_s = DEFAULT_PATIENCE_S

    def _patient_connection(self) -> AbstractContextManager[Connection]:
        return patient_connection(self._engine, self.connect_patience_s)

    def optimize_for_webserver(
        self, statement_timeout: int, pool_recycle: int, max_overflow: int
    ) -> None:
        # The dagster-postgres storage after this mixin in the MRO builds the pooled engine.
        super().optimize_for_webserver(  # type: ignore[misc]
            statement_timeout, pool_recycle, max_overflow
        )
        # The webserver holds a pooled connection; after a restart it is dead, and without a
        # ping at checkout the first query through it fails instead of reconnecting.
        self._engine.pool._pre_ping = True


class PatientEventLogStorage(_Patient, PostgresEventLogStorage):
    """dagster-postgres event log storage that waits out a database restart."""

    def _connect(self) -> AbstractContextManager[Connection]:
        return self._patient_connection()


class PatientRunStorage(_Patient, PostgresRunStorage):
    """dagster-postgres run storage that waits out a database restart."""

    def connect(self) -> AbstractContextManager[Connection]:
        return self._patient_connection()


class PatientScheduleStorage(_Patient, PostgresScheduleStorage):
    """dagster-postgres schedule storage that waits out a database restart."""

    def connect(self, run_id: str | None = None) -> AbstractContextManager[Connection]:
        return self._patient_connection()


def limit_patience(instance: Any, seconds: float) -> None:
    """Wait at most `seconds` for the database in this process's instance (an API process
    answers 503 rather than holding a request through an outage)."""
    for storage in (instance.run_storage, instance.event_log_storage):
        if isinstance(storage, _Patient):
            storage.connect_patience_s = min(storage.connect_patience_s, seconds)


class MovieGenPostgresStorage(DagsterPostgresStorage):
    """The instance's storage (`storage: custom:` in dagster.yaml): the patient classes above."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        connect_patience_s: float = DEFAULT_PATIENCE_S,
    ) -> None:
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self.connect_patience_s = connect_patience_s
        self._run_storage = PatientRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._event_log_storage = PatientEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PatientScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.connect_patience_s = connect_patience_s
        # Skip DagsterPostgresStorage.__init__: it would build the impatient classes too.
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **cast(dict[str, Any], pg_config()),
            "connect_patience_seconds": Field(
                float, is_required=False, default_value=DEFAULT_PATIENCE_S
            ),
        }

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> MovieGenPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),  # type: ignore[arg-type]
            connect_patience_s=float(config_value["connect_patience_seconds"]),
        )

    # The component classes are not configured separately (their config has no patience).
    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return None

    @property
    def run_storage_data(self) -> ConfigurableClassData | None:
        return None

    @property
    def schedule_storage_data(self) -> ConfigurableClassData | None:
        return None
