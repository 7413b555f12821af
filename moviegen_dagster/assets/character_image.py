"""character_image: a character design image per project/character partition."""

import time
from typing import Any

import dagster as dg

from moviegen_dagster import worker_state
from moviegen_dagster.assets.common import OOM_RETRY, should_stop, task_run
from moviegen_dagster.partitions import scenes
from resources.catalog import ModelCatalog
from resources.media_store import CONTENT_TYPES, MediaStore, media_key
from resources.models import ModelPoolResource
from resources.task_state import TaskStateResource


@dg.asset(
    partitions_def=scenes,
    retry_policy=OOM_RETRY,
    group_name="characters",
    kinds={"image", "jpeg"},
    metadata={"partition_key": "{project_id}/{character_id}"},
)
def character_image(
    context: dg.AssetExecutionContext,
    task_state: TaskStateResource,
    media_store: MediaStore,
    models: ModelPoolResource,
    catalog: ModelCatalog,
) -> dg.MaterializeResult:
    """A character design image (1024x1024 JPEG) generated from the task's description."""
    from moviegen_dagster.generation.image import ImageRequest, build_prompt, generate_image

    with task_run(context, task_state) as run:
        task, report = run.task, run.report
        data = task["task_data"]
        width, height = _resolution(data.get("resolution"), 1024, 1024)
        prompt = build_prompt(data)

        report(0.05, "loading_model", force=True)
        t0 = time.monotonic()
        pool = models.pool()
        pipe = pool.get_pipeline(
            kind="image",
            model=catalog.image_model,
            revision=catalog.image_revision,
            dtype=models.dtype,
            device=models.device,
        )
        load_s = time.monotonic() - t0

        def on_step(step: int, total: int) -> None:
            report(0.1 + 0.75 * step / total, "generating_image")

        request = ImageRequest(
            prompt=prompt,
            width=width,
            height=height,
            seed=data.get("seed"),
            steps=int(data.get("steps") or catalog.image_steps),
        )
        report(0.1, "generating_image", force=True)
        image = generate_image(
            pipe, request, on_step=on_step, should_stop=lambda: should_stop(context)
        )

        report(0.9, "uploading", force=True)
        key = media_key(task["project_id"], "images", run.task_id, "jpg")
        t1 = time.monotonic()
        media_store.put(key, image.jpeg, CONTENT_TYPES["jpg"])
        upload_s = time.monotonic() - t1
        url = media_store.url(key)

        meta: dict[str, Any] = {
            "resolution": f"{image.width}x{image.height}",
            "file_size": len(image.jpeg),
            "format": "jpeg",
            "seed": image.seed,
            "model": catalog.image_model,
            "steps": image.steps,
            "work_units": (image.width * image.height) / (1024 * 1024),
        }
        state_result = {"media_key": key, "media_url": url, "metadata": meta}
        task_state.save_result(run.task_id, state_result)
        report(0.98, "upload_complete", force=True)
        return dg.MaterializeResult(
            metadata={
                "task_id": run.task_id,
                "media_url": dg.MetadataValue.url(url),
                "media_key": key,
                "prompt": prompt,
                "seed": image.seed,
                "model": catalog.image_model,
                "model_revision": catalog.image_revision or "",
                "resolution": meta["resolution"],
                "file_size": len(image.jpeg),
                "model_load_seconds": round(load_s, 3),
                # How often this worker process has loaded any pipeline: stays 1 while the
                # model is resident, which is the point of long-lived workers.
                "pipeline_loads": pool.load_count(),
                "worker": worker_state.current.worker_id if worker_state.current else "in-process",
                "generation_seconds": round(image.generation_seconds, 3),
                "upload_seconds": round(upload_s, 3),
                "total_seconds": round(time.monotonic() - run.started, 3),
            }
        )


def _resolution(value: object, width: int, height: int) -> tuple[int, int]:
    if isinstance(value, str) and "x" in value:
        w, _, h = value.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    return width, height
