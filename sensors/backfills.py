"""The backfill schedule: the per-project backfill planning on a cron, from settings."""

from __future__ import annotations

import dagster as dg

from moviegen_dagster import backfills, store, tags
from moviegen_dagster.db import connect
from moviegen_dagster.settings import Settings

MEDIA_ASSETS = ("scene_video", "character_image", "dialogue_audio")


def scheduled_backfill_requests(
    context: dg.ScheduleEvaluationContext, settings: Settings
) -> dg.SkipReason | list[dg.RunRequest]:
    """Plan every project in scope; one low-priority run request per partition to redo."""
    selection = backfills.Selection(reasons=backfills.parse_reasons(settings.backfill_reasons))
    tick = context.scheduled_execution_time
    requests: list[dg.RunRequest] = []
    summary: list[str] = []
    with connect(settings.require_database_url()) as conn:
        for project_id in backfills.projects_in_scope(conn, settings.backfill_projects):
            items = backfills.plan(conn, project_id, selection, settings)
            if not items:
                continue
            row = store.insert_backfill(
                conn,
                project_id,
                "schedule",
                {**selection.as_json(), "scheduled_at": tick.isoformat() if tick else None},
                False,
                "launched",
                [i.as_json() for i in items],
            )
            conn.commit()
            summary.append(f"{project_id}: {len(items)}")
            for item in items:
                requests.append(
                    dg.RunRequest(
                        # One run per partition and tick, even if the tick is evaluated again.
                        run_key=f"{row['backfill_id']}:{item.asset}:{item.partition_key}",
                        asset_selection=[dg.AssetKey(item.asset)],
                        partition_key=item.partition_key,
                        tags={
                            tags.PRIORITY: str(tags.BACKFILL_PRIORITY),
                            tags.BACKFILL_ID: str(row["backfill_id"]),
                            tags.PROJECT_ID: project_id,
                        },
                    )
                )
    if not requests:
        return dg.SkipReason("no partition is missing, failed or stale")
    context.log.info("backfill runs per project: " + ", ".join(summary))
    return requests


def backfill_schedule(settings: Settings) -> dg.ScheduleDefinition | None:
    """The schedule for MOVIEGEN_BACKFILL_CRON, or None when the setting is empty."""
    if not settings.backfill_cron.strip():
        return None
    backfills.parse_reasons(settings.backfill_reasons)  # a bad setting fails the code location

    @dg.schedule(
        name="scheduled_backfills",
        cron_schedule=settings.backfill_cron.strip(),
        target=dg.AssetSelection.assets(*MEDIA_ASSETS),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Re-materialize the partitions of "
            f"{settings.backfill_projects!r} that are {settings.backfill_reasons}, below the "
            "priority of interactive tasks."
        ),
    )
    def scheduled_backfills(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.SkipReason | list[dg.RunRequest]:
        """Plan and launch the backfill of every project in scope."""
        return scheduled_backfill_requests(context, settings)

    return scheduled_backfills
