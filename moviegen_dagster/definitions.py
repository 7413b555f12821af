"""The MovieGen code location: assets, jobs, sensors and the resources bound to them."""

from __future__ import annotations

import dagster as dg

from moviegen_dagster.assets.character_image import character_image
from moviegen_dagster.assets.dialogue_audio import dialogue_audio
from moviegen_dagster.assets.scene_video import scene_video
from moviegen_dagster.jobs import TASK_JOBS
from moviegen_dagster.lineage import INPUT_SPECS
from moviegen_dagster.settings import Settings, get_settings
from resources.catalog import ModelCatalog
from resources.media_store import LocalMediaStore, MediaStore
from resources.models import ModelPoolResource
from resources.payload import PayloadCMS
from resources.task_state import TaskStateResource
from sensors.backfills import backfill_schedule
from sensors.reconcile import reconcile_tasks, sync_task_status
from sensors.retention import prune_retention
from sensors.webhooks import deliver_webhooks


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The one place that chooses which resource implementations are bound."""
    tiny = settings.model_profile == "tiny"
    return {
        "task_state": TaskStateResource(database_url=dg.EnvVar("DATABASE_URL")),
        "media_store": media_store(settings),
        "payload_cms": payload_cms(settings),
        "models": ModelPoolResource(
            capacity=settings.model_pool_size, device=settings.device, dtype=settings.dtype
        ),
        "catalog": ModelCatalog(
            profile=settings.model_profile,
            image_model=settings.image_model_ref(),
            image_revision=settings.image_model_revision,
            image_steps=settings.image_steps or 4,
            tts_model=settings.tts_model_ref(),
            tts_revision=settings.tts_model_revision,
            ambience_model=settings.ambience_model_ref(),
            ambience_revision=settings.ambience_model_revision,
            ambience_steps=settings.ambience_steps or (8 if tiny else 100),
            video_model=settings.video_model_ref(),
            video_revision=settings.video_model_revision,
            video_steps=settings.video_steps or (4 if tiny else 8),
            video_gen_width=int(settings.video_gen_size.partition("x")[0] or 0),
            video_gen_height=int(settings.video_gen_size.partition("x")[2] or 0),
        ),
    }


def media_store(settings: Settings) -> MediaStore:
    """R2 when configured (secrets read from the environment at run time), else local files."""
    if not settings.r2_configured:
        return LocalMediaStore(root=str(settings.media_root), base_url=settings.api_base_url)
    from dagster_aws.s3 import S3Resource

    from resources.r2_store import R2MediaStore

    return R2MediaStore(
        s3=S3Resource(
            endpoint_url=settings.r2_endpoint_url,
            region_name=settings.r2_region,
            # boto3 counts these as retries on top of R2MediaStore's own upload attempts.
            max_attempts=2,
            aws_access_key_id=dg.EnvVar("R2_ACCESS_KEY_ID"),
            aws_secret_access_key=dg.EnvVar("R2_SECRET_ACCESS_KEY"),
        ),
        bucket=str(settings.r2_bucket),
        public_base_url=settings.r2_public_base_url,
        presign_seconds=settings.r2_presign_seconds,
    )


def payload_cms(settings: Settings) -> PayloadCMS:
    """Payload registration when configured; an unconfigured resource skips the step."""
    if not (settings.payload_url and settings.payload_api_key):
        return PayloadCMS()
    return PayloadCMS(
        url=settings.payload_url,
        api_key=dg.EnvVar("PAYLOAD_API_KEY"),
        media_collection=settings.payload_media_collection,
        auth_collection=settings.payload_auth_collection,
        mode=settings.payload_media_mode,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    """Definitions for the given settings."""
    schedule = backfill_schedule(settings)
    return dg.Definitions(
        assets=[*INPUT_SPECS, scene_video, character_image, dialogue_audio],
        jobs=list(TASK_JOBS.values()),
        sensors=[reconcile_tasks, sync_task_status, deliver_webhooks, prune_retention],
        schedules=[schedule] if schedule is not None else [],
        resources=build_resources(settings),
        # Runs of the implicit asset job (the UI's "Materialize", backfills) execute inside
        # the worker process too, like the task jobs.
        executor=dg.in_process_executor,
    )


defs = build_definitions(get_settings())
