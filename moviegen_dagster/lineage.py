"""Lineage of a take: the inputs it used (as source assets), its provenance and data version.

The inputs of a take (storyboard frames, style guides and reference images, voice profiles)
are external source assets partitioned like the media assets: a partition of
`storyboard_frames` holds the frames the scene's latest take used. Input URLs come with each
task, so no job builds these assets; instead each take records its inputs on the partition
(every URL with its sha256, and a data version over them) as a runless-style materialization
logged by the take's run just before the take's own materialization. (A materialization, not
an observation: Dagster derives the input data version of a partitioned dependency from
materializations only.) The media asset's data version is derived from the input hashes, the
model and its revision, and the generation parameters; its code version from
TAKE_CODE_VERSION. Dagster's UI then shows, per partition, what went into each take, and
marks a take stale once its inputs' partition records different content.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from typing import Any

import dagster as dg

from moviegen_dagster.partitions import scenes
from moviegen_dagster.previews import Preview, inline_data_url

# Source asset of each task type's inputs.
INPUT_ASSET_BY_TASK_TYPE = {
    "generate_video": "storyboard_frames",
    "generate_image": "style_references",
    "process_audio": "voice_profiles",
}

storyboard_frames = dg.AssetSpec(
    "storyboard_frames",
    partitions_def=scenes,
    group_name="scenes",
    kinds={"image"},
    description=(
        "Storyboard keyframes of a scene (task_data.storyboard_images), fetched by URL. Each "
        "take records the frames it used here: URL and sha256 per frame."
    ),
)
style_references = dg.AssetSpec(
    "style_references",
    partitions_def=scenes,
    group_name="characters",
    kinds={"image"},
    description=(
        "Style guide and reference images of a character (task_data.style_guide, "
        "reference_images), fetched by URL; each take records them here with their sha256."
    ),
)
voice_profiles = dg.AssetSpec(
    "voice_profiles",
    partitions_def=scenes,
    group_name="dialogue",
    kinds={"audio"},
    description=(
        "The character's voice profile WAV (task_data.character_voice_profile), the voice "
        "prompt of the TTS; each take records it here with its sha256."
    ),
)
INPUT_SPECS = [storyboard_frames, style_references, voice_profiles]
# The input asset of each media asset group (a media asset's upstream in the graph).
INPUT_ASSET_BY_GROUP = {str(spec.group_name): spec.key.to_user_string() for spec in INPUT_SPECS}

# Inputs fetched by the run executing in this context (one run per worker child at a time).
_FETCHED: ContextVar[list[dict[str, Any]] | None] = ContextVar("moviegen_inputs", default=None)


def sha256(content: bytes) -> str:
    """Content hash recorded for every input."""
    return hashlib.sha256(content).hexdigest()


def start_inputs() -> None:
    """Start recording the inputs of a new take."""
    _FETCHED.set([])


def record_input(name: str, url: str, content: bytes) -> None:
    """Remember one fetched input (name as in task_data, URL, content hash, size)."""
    fetched = _FETCHED.get()
    if fetched is not None:
        fetched.append({"name": name, "url": url, "sha256": sha256(content), "bytes": len(content)})


def fetched_inputs() -> list[dict[str, Any]]:
    """The inputs recorded since start_inputs()."""
    return list(_FETCHED.get() or [])


def inputs_version(inputs: list[dict[str, Any]]) -> str:
    """One data version over a take's inputs (order matters: frames are keyframes in order)."""
    joined = "\n".join(f"{i['name']}={i['sha256']}" for i in inputs)
    return hashlib.sha256(joined.encode()).hexdigest()[:24]


def take_version(inputs: list[dict[str, Any]], model: str, revision: str, params: Any) -> str:
    """Data version of a take: its inputs' content, model, revision and parameters."""
    doc = json.dumps(
        {"inputs": inputs_version(inputs), "model": model, "revision": revision, "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def primary_revision(provenance: dict[str, Any]) -> str:
    """The revision of the take's main model (image, video or TTS)."""
    return str(provenance.get("model_revision") or provenance.get("tts_model_revision") or "")


def inputs_table(inputs: list[dict[str, Any]]) -> str:
    """Markdown table of the inputs, with links."""
    if not inputs:
        return "_no URL inputs_"
    rows = [
        f"| {i['name']} | [{_short(i['url'])}]({i['url']}) | `{i['sha256'][:16]}…` | {i['bytes']} |"
        for i in inputs
    ]
    return "| input | URL | sha256 | bytes |\n|---|---|---|---|\n" + "\n".join(rows)


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:28] + "…" + url[-28:]


# The Dagster UI renders markdown metadata inline only below this length (longer values hide
# behind "[Show Markdown]"), so an inlined picture must fit in it.
MARKDOWN_INLINE_CHARS = 1000


def preview(ext: str, url: str, still: Preview | None = None) -> str:
    """Markdown the Dagster UI renders: the image itself; for video and audio a link, under
    the take's last worker preview (last frame, waveform) inlined as a small data URL."""
    if ext == "jpg":
        return f"![take]({url})"
    label = "scene video (MP4)" if ext == "mp4" else "dialogue (MP3)"
    link = f"[▶ {label}]({url})"
    if still is None:
        return link
    alt = still.label.replace("[", "").replace("]", "")
    budget = MARKDOWN_INLINE_CHARS - len(link) - len(alt) - 16
    data_url = inline_data_url(still, budget)
    return f"![{alt}]({data_url})\n\n{link}" if data_url else link


def record_inputs_asset(
    context: Any, task: dict[str, Any], inputs: list[dict[str, Any]]
) -> str | None:
    """Record the take's inputs on their source asset partition; returns their version."""
    if not inputs or context is None:
        return None
    version = inputs_version(inputs)
    context.log_event(
        # A materialization rather than an observation: Dagster derives the input data
        # version of a partitioned dependency from materializations only.
        dg.AssetMaterialization(
            asset_key=INPUT_ASSET_BY_TASK_TYPE[task["task_type"]],
            partition=task["partition_key"],
            metadata={
                "task_id": str(task["task_id"]),
                "inputs": dg.MetadataValue.json(inputs),
                "inputs_table": dg.MetadataValue.md(inputs_table(inputs)),
            },
            tags={"dagster/data_version": version},
        )
    )
    # Dagster reads the input data versions when the step starts, before this record existed;
    # dropping the cached entry makes the take's materialization refer to this one.
    step = getattr(getattr(context, "op_execution_context", None), "_step_execution_context", None)
    wipe = getattr(step, "wipe_input_asset_version_info", None)
    if wipe is not None:
        wipe(dg.AssetKey(INPUT_ASSET_BY_TASK_TYPE[task["task_type"]]))
    return version


# Bump when a change to the generation code should make existing takes stale.
TAKE_CODE_VERSION = "1"


def take_provenance(meta: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """What the staleness check compares later: inputs with hashes, model, revision."""
    inputs = list(provenance.get("inputs") or [])
    model = str(meta.get("model") or "")
    revision = primary_revision(provenance)
    params = {
        "seed": meta.get("seed"),
        "prompt": provenance.get("prompt") or provenance.get("text"),
    }
    return {
        "inputs": inputs,
        "model": model,
        "model_revision": revision,
        "data_version": take_version(inputs, model, revision, params),
    }


def describe_lineage(
    run: Any, state: Any, ext: str, key: str, meta: dict[str, Any], provenance: dict[str, Any]
) -> tuple[dict[str, Any], dg.DataVersion]:
    """Record the take's inputs (input asset partition, task row); its metadata and version."""
    import psycopg
    from psycopg.rows import dict_row

    from moviegen_dagster import store
    from moviegen_dagster.media_urls import stable_media_url
    from moviegen_dagster.settings import get_settings

    prov = take_provenance(meta, provenance)
    record_inputs_asset(run.context, run.task, prov["inputs"])
    with psycopg.connect(state.database_url, autocommit=True, row_factory=dict_row) as conn:
        store.save_provenance(conn, run.task_id, prov)
        still = store.get_preview(conn, run.task["task_id"]) if ext != "jpg" else None
    link = stable_media_url(get_settings(), key)
    parent = run.task.get("parent_task_id")
    md: dict[str, Any] = {
        "preview": dg.MetadataValue.md(preview(ext, link, still)),
        "media_link": dg.MetadataValue.url(link),
        "model_id": prov["model"],
        "model_revision": prov["model_revision"],
        "inputs": dg.MetadataValue.json(prov["inputs"]),
        "inputs_table": dg.MetadataValue.md(inputs_table(prov["inputs"])),
        "parent_task_id": str(parent) if parent else "",
        "data_version": prov["data_version"],
    }
    return md, dg.DataVersion(prov["data_version"])
