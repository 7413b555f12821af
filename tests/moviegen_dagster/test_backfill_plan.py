"""Backfill planning on a real PostgreSQL database, and the schedule evaluated at a given time."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from moviegen_dagster import backfills, store, tags
from moviegen_dagster.definitions import build_definitions
from moviegen_dagster.lineage import sha256
from moviegen_dagster.settings import Settings
from sensors.backfills import backfill_schedule
from tests.conftest import AssetServer, jpeg
from tests.pg_support import throwaway_database


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A migrated throwaway database."""
    with throwaway_database("mg_plan") as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose changes each test commits."""
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        yield c


def _settings(tmp_path: Path, database_url: str, **env: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        MOVIEGEN_HOME=str(tmp_path), DATABASE_URL=database_url, **env
    )


def _task(
    conn: psycopg.Connection[Any],
    project: str,
    subject: str,
    status: str,
    task_type: str = "generate_video",
    provenance: dict[str, Any] | None = None,
    task_data: dict[str, Any] | None = None,
) -> store.Row:
    new = store.NewTask(
        project_id=project,
        task_type=task_type,
        priority=3,
        task_data=task_data or {"storyboard_images": ["https://example.com/f.jpg"]},
        metadata={"scene_id": subject},
        callback_url=None,
        partition_key=f"{project}/{subject}",
    )
    row = store.insert_task(conn, new, 10)
    conn.execute(
        "UPDATE moviegen.tasks SET status = %s, provenance = %s WHERE task_id = %s",
        (status, Jsonb(provenance) if provenance else None, row["task_id"]),
    )
    conn.commit()
    return row


def test_latest_task_decides_and_open_partitions_are_left_alone(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, database_url)
    project = f"p_{secrets.token_hex(4)}"
    _task(conn, project, "retried_ok", "failed")
    _task(conn, project, "retried_ok", "completed")  # failed once, then a take: not failed
    _task(conn, project, "done_then_failed", "completed")
    latest_failed = _task(conn, project, "done_then_failed", "failed")
    _task(conn, project, "busy", "failed")
    _task(conn, project, "busy", "queued")  # a retry in flight: leave it alone
    never = _task(conn, project, "never", "cancelled")

    selection = backfills.Selection(reasons=("missing", "failed", "stale"))
    items = {i.subject: i for i in backfills.plan(conn, project, selection, settings)}
    assert set(items) == {"done_then_failed", "never"}
    assert items["done_then_failed"].reasons == ["failed"]
    assert items["done_then_failed"].parent_task_id == str(latest_failed["task_id"])
    assert items["never"].reasons == ["missing"]
    assert items["never"].parent_task_id == str(never["task_id"])
    # Takes recorded before provenance existed are never called stale.
    assert "retried_ok" not in items


def test_stale_when_input_content_or_model_changes(
    conn: psycopg.Connection[Any],
    database_url: str,
    tmp_path: Path,
    asset_server: AssetServer,
) -> None:
    settings = _settings(tmp_path, database_url, MOVIEGEN_URL_ALLOWLIST="127.0.0.1")
    project = f"p_{secrets.token_hex(4)}"
    frame = jpeg((200, 30, 30))
    url = asset_server.add(f"/{project}/frame.jpg", "image/jpeg", frame)
    prov = {
        "inputs": [{"name": "storyboard_images[0]", "url": url, "sha256": sha256(frame)}],
        "model": settings.video_model_ref(),
        "model_revision": "",
    }
    _task(conn, project, "same", "completed", provenance=prov)
    _task(conn, project, "old_model", "completed", provenance={**prov, "model_revision": "v1"})
    selection = backfills.Selection(reasons=("stale",))
    items = {i.subject: i for i in backfills.plan(conn, project, selection, settings)}
    assert set(items) == {"old_model"}
    assert items["old_model"].details == [
        f"model changed: {settings.video_model_ref()}@v1 -> {settings.video_model_ref()}@-"
    ]

    # The storyboard frame behind the same URL changes: both takes are stale now.
    asset_server.add(f"/{project}/frame.jpg", "image/jpeg", jpeg((30, 200, 30)))
    items = {i.subject: i for i in backfills.plan(conn, project, selection, settings)}
    assert set(items) == {"same", "old_model"}
    assert items["same"].details == [f"storyboard_images[0]: content changed ({url})"]
    # Without "stale" among the reasons nothing is fetched or reported.
    assert backfills.plan(conn, project, backfills.Selection(reasons=("failed",)), settings) == []


def test_dialogue_model_includes_ambience_when_the_task_asks_for_it(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url, MOVIEGEN_TTS_MODEL_REVISION="r2")
    plain, rev = backfills.current_model(settings, "process_audio", {"text": "hi"})
    noisy, _ = backfills.current_model(
        settings, "process_audio", {"text": "hi", "background_noise": "rain"}
    )
    assert rev == "r2" and plain == settings.tts_model_ref()
    assert noisy == f"{settings.tts_model_ref()} + {settings.ambience_model_ref()}"


def test_schedule_evaluates_at_an_injected_time(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    project = f"p_{secrets.token_hex(4)}"
    other = f"p_{secrets.token_hex(4)}"
    failed = _task(conn, project, "scene_1", "failed")
    _task(conn, project, "scene_2", "completed")
    _task(conn, other, "scene_9", "failed")
    settings = _settings(
        tmp_path,
        database_url,
        MOVIEGEN_BACKFILL_CRON="0 3 * * *",
        MOVIEGEN_BACKFILL_PROJECTS=project,
        MOVIEGEN_BACKFILL_REASONS="failed",
    )
    # The schedule as the code location defines it with these settings.
    repo = build_definitions(settings).get_repository_def()
    schedule = repo.get_schedule_def("scheduled_backfills")
    assert schedule.cron_schedule == "0 3 * * *"
    at = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        # The API registers a task's partition when it accepts the task.
        instance.add_dynamic_partitions("scenes", [f"{project}/scene_1", f"{project}/scene_2"])
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=at, repository_def=repo
        )
        result = schedule.evaluate_tick(context)
    requests = list(result.run_requests or [])
    assert [(r.partition_key, r.asset_selection) for r in requests] == [
        (f"{project}/scene_1", [dg.AssetKey("scene_video")])
    ]
    run_tags = requests[0].tags
    assert run_tags[tags.PRIORITY] == str(tags.BACKFILL_PRIORITY)
    record = store.get_backfill(conn, project, run_tags[tags.BACKFILL_ID])
    assert record is not None and record["requested_by"] == "schedule"
    assert record["selection"]["scheduled_at"] == at.isoformat()
    assert [i["parent_task_id"] for i in record["plan"]] == [str(failed["task_id"])]
    assert requests[0].run_key == f"{record['backfill_id']}:scene_video:{project}/scene_1"
    # The other project is out of scope.
    assert store.list_backfills(conn, other, 1, 10)[1] == 0


def test_schedule_is_off_without_cron_and_refuses_bad_reasons(
    tmp_path: Path, database_url: str
) -> None:
    assert backfill_schedule(_settings(tmp_path, database_url)) is None
    bad = _settings(
        tmp_path, database_url, MOVIEGEN_BACKFILL_CRON="0 3 * * *", MOVIEGEN_BACKFILL_REASONS="old"
    )
    with pytest.raises(ValueError, match="MOVIEGEN_BACKFILL_REASONS"):
        backfill_schedule(bad)


def test_backfill_task_ids_are_uuids(conn: psycopg.Connection[Any]) -> None:
    assert store.get_backfill(conn, "p", "not-a-uuid") is None
    assert store.get_backfill(conn, "p", uuid.uuid4()) is None
