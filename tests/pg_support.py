"""Throwaway databases on the machine's PostgreSQL for tests that need no whole stack."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from moviegen_dagster import db

# The machine's PostgreSQL (trust auth); override to point the tests at another server.
PG_ADMIN_URL = os.environ.get(
    "MOVIEGEN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def throwaway_database(prefix: str, migrate: bool = True) -> Iterator[str]:
    """A fresh database (with the moviegen schema unless `migrate` is false), dropped after."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        if migrate:
            db.migrate(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
