"""One job per task type; each run materializes one partition of one media asset."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from moviegen_dagster import tags
from moviegen_dagster.assets.character_image import character_image
from moviegen_dagster.assets.dialogue_audio import dialogue_audio
from moviegen_dagster.assets.scene_video import scene_video
from moviegen_dagster.partitions import scenes
from moviegen_dagster.settings import WORKER_TYPE_BY_TASK


def _task_job(
    name: str, asset: dg.AssetsDefinition, description: str
) -> UnresolvedAssetJobDefinition:
    # In-process executor: the whole run executes inside the worker's prefork child, next to
    # the models it already loaded. The job's tags route runs launched from the UI to the
    # right queue and concurrency limit (the run coordinator tags every other media run).
    worker_type = WORKER_TYPE_BY_TASK[name]
    return dg.define_asset_job(
        name=name,
        selection=[asset],
        partitions_def=scenes,
        executor_def=dg.in_process_executor,
        description=description,
        tags={tags.WORKER_TYPE: worker_type, tags.CELERY_QUEUE: worker_type},
    )


TASK_JOBS = {
    "generate_video": _task_job(
        "generate_video", scene_video, "Render a scene video from storyboard frames for one task."
    ),
    "generate_image": _task_job(
        "generate_image", character_image, "Generate a character design image for one task."
    ),
    "process_audio": _task_job(
        "process_audio", dialogue_audio, "Synthesize a line of character dialogue for one task."
    ),
}
