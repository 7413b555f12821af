"""One job per task type; each run materializes one partition of one media asset."""

import dagster as dg

from moviegen_dagster.assets.character_image import character_image
from moviegen_dagster.assets.dialogue_audio import dialogue_audio
from moviegen_dagster.assets.scene_video import scene_video
from moviegen_dagster.partitions import scenes

# In-process executor: the whole run executes inside the worker's prefork child, next to the
# models it already loaded.
generate_image = dg.define_asset_job(
    name="generate_image",
    selection=[character_image],
    partitions_def=scenes,
    executor_def=dg.in_process_executor,
    description="Generate a character design image for one task (launched by the API).",
)

process_audio = dg.define_asset_job(
    name="process_audio",
    selection=[dialogue_audio],
    partitions_def=scenes,
    executor_def=dg.in_process_executor,
    description="Synthesize a line of character dialogue for one task (launched by the API).",
)

generate_video = dg.define_asset_job(
    name="generate_video",
    selection=[scene_video],
    partitions_def=scenes,
    executor_def=dg.in_process_executor,
    description="Render a scene video from storyboard frames for one task (launched by the API).",
)

TASK_JOBS = {
    "generate_video": generate_video,
    "generate_image": generate_image,
    "process_audio": process_audio,
}
