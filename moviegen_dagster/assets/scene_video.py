"""scene_video: a scene's video (with its soundtrack) per project/scene partition."""

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

# Progress at which each post-denoising phase starts (rendering covers 0.08-0.80).
PHASES = {"generating_audio": 0.8, "encoding": 0.85}


@media_asset("scenes", {"video", "mp4"}, "scene_id")
def scene_video(
    context: dg.AssetExecutionContext,
    task_state: TaskStateResource,
    media_store: MediaStore,
    payload_cms: PayloadCMS,
    models: ModelPoolResource,
    catalog: ModelCatalog,
) -> dg.MaterializeResult:
    """A scene video (H.264 + AAC MP4) from storyboard keyframes, with the model's own audio."""
    from moviegen_dagster.generation.video import VideoRequest, build_video_prompt, generate_video

    with task_run(context, task_state) as run:
        take = reuse_staged(run, "mp4")
        if take is None:
            data = run.task["task_data"]
            prompt = build_video_prompt(data)
            urls = list(data["storyboard_images"])
            frames = []
            for i, url in enumerate(urls):
                run.report(0.01 + 0.04 * i / len(urls), "fetching_inputs", force=i == 0)
                frames.append(fetch_image(url, f"storyboard_images[{i}]"))

            run.report(0.05, "loading_model", force=True)
            t0 = time.monotonic()
            pipe = models.get_pipeline("video", catalog.video_model, catalog.video_revision)
            load_s = time.monotonic() - t0
            width, height = (int(v) for v in data.get("resolution", "1920x1080").split("x"))

            def on_step(step: int, total: int) -> None:
                run.report(0.08 + 0.72 * step / total, "rendering_video")

            run.report(0.08, "rendering_video", force=True)
            video = generate_video(
                pipe,
                VideoRequest(
                    prompt=prompt,
                    keyframes=frames,
                    duration=float(data.get("duration", 7.0)),
                    width=width,
                    height=height,
                    fps=int(data.get("fps", 24)),
                    seed=data.get("seed"),
                    steps=int(data.get("steps") or catalog.video_steps),
                ),
                on_step=on_step,
                should_stop=lambda: should_stop(context),
                gen_width=catalog.video_gen_width or None,
                gen_height=catalog.video_gen_height or None,
                on_phase=lambda phase: run.report(PHASES[phase], phase, force=True),
                on_preview=run.preview,
            )
            take = stage(
                run,
                "mp4",
                Take(
                    data=video.mp4,
                    media_meta={
                        "duration": round(video.duration, 3),
                        "resolution": f"{video.width}x{video.height}",
                        "fps": video.fps,
                        "format": "mp4",
                        "video_codec": video.video_codec,
                        "audio_codec": video.audio_codec,
                        "audio_sample_rate": video.audio_sample_rate,
                        "seed": video.seed,
                        "model": catalog.video_model,
                        "clips": video.clips,
                        "work_units": (video.duration / 7.0)
                        * (video.width * video.height)
                        / (1920 * 1080),
                    },
                    provenance={
                        "prompt": prompt,
                        "storyboard_urls": ", ".join(urls),
                        "audio_cues": ", ".join(data.get("audio_cues", [])),
                        "model_revision": catalog.video_revision or "",
                        "model_load_seconds": round(load_s, 3),
                        "generation_seconds": round(video.generation_seconds, 3),
                        "pipeline_loads": models.load_count(
                            "video", catalog.video_model, catalog.video_revision
                        ),
                    },
                ),
            )
        return deliver(
            run, media_store, task_state, payload_cms, kind="videos", ext="mp4", take=take
        )
