"""dialogue_audio: a line of character dialogue per project/dialogue partition."""

import time

import dagster as dg

from moviegen_dagster.assets.common import (
    Take,
    deliver,
    fetch_input,
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

VOICE_TYPES = ("audio/", "application/octet-stream")


@media_asset("dialogue", {"audio", "mp3"}, "dialogue_id")
def dialogue_audio(
    context: dg.AssetExecutionContext,
    task_state: TaskStateResource,
    media_store: MediaStore,
    payload_cms: PayloadCMS,
    models: ModelPoolResource,
    catalog: ModelCatalog,
) -> dg.MaterializeResult:
    """A line of dialogue (MP3) in the voice of the character's profile WAV, with ambience."""
    from moviegen_dagster.generation.speech import generate_speech, speech_request_from_task

    with task_run(context, task_state) as run:
        take = reuse_staged(run, "mp3")
        if take is None:
            data = run.task["task_data"]
            run.report(0.02, "fetching_inputs", force=True)
            voice_url = data["character_voice_profile"]
            voice = fetch_input(voice_url, "character_voice_profile", VOICE_TYPES)
            request = speech_request_from_task(data, voice)
            request.sample_rate = int(data.get("sample_rate", 44100))
            request.ambience_steps = catalog.ambience_steps

            run.report(0.05, "loading_model", force=True)
            t0 = time.monotonic()
            tts = models.get_pipeline("tts", catalog.tts_model, catalog.tts_revision)
            ambience = None
            if request.background_noise:
                ambience = models.get_pipeline(
                    "ambience", catalog.ambience_model, catalog.ambience_revision
                )
            load_s = time.monotonic() - t0

            def on_step(step: int, total: int) -> None:
                run.report(0.1 + 0.75 * step / total, "synthesizing_speech")

            run.report(0.1, "synthesizing_speech", force=True)
            speech = generate_speech(
                tts,
                ambience,
                request,
                on_step=on_step,
                should_stop=lambda: should_stop(context),
                on_preview=run.preview,
            )
            models_used = catalog.tts_model + (f" + {catalog.ambience_model}" if ambience else "")
            take = stage(
                run,
                "mp3",
                Take(
                    data=speech.mp3,
                    media_meta={
                        "duration": round(speech.duration, 3),
                        "sample_rate": speech.sample_rate,
                        "channels": speech.channels,
                        "bitrate": speech.bitrate,
                        "format": "mp3",
                        "voice": speech.voice,
                        "seed": speech.seed,
                        "model": models_used,
                        "work_units": max(len(request.text), 1) / 40.0,
                    },
                    provenance={
                        "text": request.text,
                        "voice_profile_url": voice_url,
                        "emotion": request.emotion or "",
                        "pace": str(request.pace),
                        "background_noise": request.background_noise or "",
                        "ambience_gain_db": speech.ambience_gain_db
                        if speech.ambience_gain_db is not None
                        else 0.0,
                        "tts_model_revision": catalog.tts_revision or "",
                        "model_load_seconds": round(load_s, 3),
                        "generation_seconds": round(speech.generation_seconds, 3),
                        "pipeline_loads": models.load_count(
                            "tts", catalog.tts_model, catalog.tts_revision
                        ),
                    },
                ),
            )
        return deliver(
            run, media_store, task_state, payload_cms, kind="audio", ext="mp3", take=take
        )
