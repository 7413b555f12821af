"""character_image: a character design image per project/character partition."""

import time

import dagster as dg

from moviegen_dagster.assets.common import (
    Take,
    deliver,
    fetch_image,
    media_asset,
    reuse_staged,
    should_stop,
    stage,
    task_run,
)
from resources.catalog import ModelCatalog
from resources.media_store import MediaStore
from resources.models import ModelPoolResource
from resources.payload import PayloadCMS
from resources.task_state import TaskStateResource


@media_asset("characters", {"image", "jpeg"}, "character_id")
def character_image(
    context: dg.AssetExecutionContext,
    task_state: TaskStateResource,
    media_store: MediaStore,
    payload_cms: PayloadCMS,
    models: ModelPoolResource,
    catalog: ModelCatalog,
) -> dg.MaterializeResult:
    """A character design image (1024x1024 JPEG) generated from the task's description."""
    from moviegen_dagster.generation.image import ImageRequest, build_prompt, generate_image

    with task_run(context, task_state) as run:
        take = reuse_staged(run, "jpg")
        if take is None:
            data = run.task["task_data"]
            width, height = (int(v) for v in data.get("resolution", "1024x1024").split("x"))
            prompt = build_prompt(data)
            run.report(0.02, "fetching_inputs", force=True)
            # The style guide leads: the pipeline weighs references in order.
            ref_urls = [("style_guide", data["style_guide"])] if data.get("style_guide") else []
            ref_urls += [
                (f"reference_images[{i}]", u)
                for i, u in enumerate(data.get("reference_images", []))
            ]
            references = [fetch_image(url, what) for what, url in ref_urls]

            run.report(0.05, "loading_model", force=True)
            t0 = time.monotonic()
            pipe = models.get_pipeline("image", catalog.image_model, catalog.image_revision)
            load_s = time.monotonic() - t0

            def on_step(step: int, total: int) -> None:
                run.report(0.1 + 0.75 * step / total, "generating_image")

            request = ImageRequest(
                prompt=prompt,
                width=width,
                height=height,
                seed=data.get("seed"),
                steps=int(data.get("steps") or catalog.image_steps),
                reference_images=references,
            )
            run.report(0.1, "generating_image", force=True)
            image = generate_image(
                pipe,
                request,
                on_step=on_step,
                should_stop=lambda: should_stop(context),
                on_preview=run.preview,
            )
            take = stage(
                run,
                "jpg",
                Take(
                    data=image.jpeg,
                    media_meta={
                        "resolution": f"{image.width}x{image.height}",
                        "format": "jpeg",
                        "seed": image.seed,
                        "model": catalog.image_model,
                        "steps": image.steps,
                        "work_units": (image.width * image.height) / (1024 * 1024),
                    },
                    provenance={
                        "prompt": prompt,
                        "reference_urls": ", ".join(url for _, url in ref_urls),
                        "model_revision": catalog.image_revision or "",
                        "model_load_seconds": round(load_s, 3),
                        "generation_seconds": round(image.generation_seconds, 3),
                        # Loads of this pipeline in this worker process: stays 1 while the model is
                        # resident, which is the point of long-lived workers.
                        "pipeline_loads": models.load_count(
                            "image", catalog.image_model, catalog.image_revision
                        ),
                    },
                ),
            )
        return deliver(
            run, media_store, task_state, payload_cms, kind="images", ext="jpg", take=take
        )
