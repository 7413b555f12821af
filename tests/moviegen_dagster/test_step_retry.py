"""Which step failures count as a lost database (retried as a run) and which are task errors."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
import sqlalchemy
from dagster_postgres.utils import DagsterPostgresException

from moviegen_dagster.step_retry import database_lost


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        DagsterPostgresException("database unreachable for 60 s"),
        _chained(RuntimeError("input versions"), psycopg.OperationalError("connection refused")),
    ],
)
def test_database_errors_are_retried(exc: BaseException) -> None:
    assert database_lost(exc) is not None


@pytest.mark.parametrize(
    "exc",
    [
        None,
        ValueError("task_data.resolution: must be WxH"),
        RuntimeError("generation failed"),
        # The op already turned it into the task's error: the task failed, not the database.
        _chained(dg.Failure("could not save the result"), psycopg.OperationalError("gone")),
    ],
)
def test_task_errors_are_not(exc: BaseException | None) -> None:
    assert database_lost(exc) is None


def test_every_media_asset_carries_the_hook() -> None:
    from moviegen_dagster.definitions import defs

    for key in ("scene_video", "character_image", "dialogue_audio"):
        asset = defs.resolve_assets_def(key)
        hooks = (
            {hook.name for hook in asset.op.hook_defs} if hasattr(asset.op, "hook_defs") else set()
        )
        assert "retry_when_database_lost" in hooks | {h.name for h in asset.hook_defs}, key
