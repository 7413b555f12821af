"""What every media asset does around generation: task lookup, progress, errors, provenance."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from moviegen_dagster import faults, tags, worker_state
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.ids import CONTENT_TYPES, media_key
from moviegen_dagster.media_urls import stable_media_url
from moviegen_dagster.settings import get_settings
from resources.media_store import MediaStore
from resources.payload import PayloadCMS, generation_metadata
from resources.task_state import ProgressReporter, TaskStateResource

# Out-of-memory is the one error worth retrying in place; the retry policy backs off with
# jitter so several slots on one GPU do not retry in lockstep.
OOM_RETRY = dg.RetryPolicy(
    max_retries=2, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


DELIVERY_ERRORS = {"MediaUploadError": "upload_failed", "PayloadError": "cms_registration_failed"}


def media_asset(group_name: str, kinds: set[str], subject: str) -> Any:
    """The decorator of a media asset: one partition per project/subject, OOM retried."""
    from moviegen_dagster.partitions import scenes

    return dg.asset(
        partitions_def=scenes,
        retry_policy=OOM_RETRY,
        group_name=group_name,
        kinds=kinds,
        metadata={"partition_key": f"{{project_id}}/{{{subject}}}"},
    )


@dataclass
class TaskRun:
    """The task a run carries, with its progress reporter."""

    task: dict[str, Any]
    report: ProgressReporter
    started: float

    @property
    def task_id(self) -> str:
        """The task's id as a string."""
        return str(self.task["task_id"])


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError"


@contextmanager
def task_run(context: dg.AssetExecutionContext, state: TaskStateResource) -> Iterator[TaskRun]:
    """Load the run's task, claim the worker slot, and turn errors into clear task errors."""
    task_id = context.run.tags.get(tags.TASK_ID)
    if not task_id:
        raise dg.Failure(
            "this run carries no moviegen/task_id tag; launch takes through the API",
            allow_retries=False,
        )
    task = state.load(task_id)
    if task["status"] not in ("queued", "processing"):
        # Cancelled (or otherwise finished) before this run started: never do the work.
        raise dg.Failure(f"task {task_id} is already {task['status']}", allow_retries=False)
    report = state.reporter(context.op_execution_context, task_id)
    worker_state.claim(task_id, context.run_id)
    completed = False
    try:
        report(0.01, "starting", force=True)
        faults.maybe_inject(task, "generate")
        yield TaskRun(task=task, report=report, started=time.monotonic())
        completed = True
    except GenerationCancelled as exc:
        raise dg.Failure("cancelled while generating", allow_retries=False) from exc
    except dg.Failure:
        raise
    except Exception as exc:
        if _is_oom(exc):
            _free_gpu_memory()
            state.save_error(task_id, "out_of_memory", f"GPU out of memory: {exc}")
            raise dg.RetryRequested(max_retries=OOM_RETRY.max_retries, seconds_to_wait=2) from exc
        if isinstance(exc, ValueError):  # bad inputs, named by fetch and validation
            state.save_error(task_id, "invalid_input", str(exc))
            raise dg.Failure(str(exc), allow_retries=False) from exc
        # Delivery errors already say which step, object or collection failed.
        code = DELIVERY_ERRORS.get(type(exc).__name__, "generation_failed")
        state.save_error(task_id, code, f"{type(exc).__name__}: {exc}")
        raise dg.Failure(f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
    finally:
        worker_state.release(completed)


def _free_gpu_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def should_stop(context: dg.AssetExecutionContext) -> bool:
    """True once the run is being cancelled (checked between denoising steps)."""
    run = context.instance.get_run_by_id(context.run_id)
    return run is not None and run.status.value in ("CANCELING", "CANCELED")


def fetch_input(url: str, what: str, accept: tuple[str, ...]) -> bytes:
    """Fetch one URL input under the SSRF rules; a refusal fails the task naming the input."""
    from moviegen_dagster.fetch import Allowlist, FetchError, fetch

    settings = get_settings()
    try:
        return fetch(
            url,
            what,
            Allowlist.parse(settings.url_allowlist),
            settings.fetch_max_bytes,
            timeout=settings.fetch_timeout_seconds,
            accept=accept,
        ).content
    except FetchError as exc:
        raise InputError(str(exc)) from exc


def fetch_image(url: str, what: str) -> Any:
    """Fetch and decode an image input (RGB); anything that does not decode fails the task."""
    import io

    from PIL import Image, UnidentifiedImageError

    raw = fetch_input(url, what, ("image/",))
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > 40_000_000:
                raise InputError(f"{what}: image is larger than 40 megapixels")
            return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise InputError(f"{what}: not a decodable image") from exc


class InputError(ValueError):
    """A task input is unusable (unreachable, refused, not what it claims to be)."""


@dataclass
class Take:
    """Generated media with their description, before delivery."""

    data: bytes
    media_meta: dict[str, Any]
    provenance: dict[str, Any]


def _staging(task_id: str, ext: str) -> tuple[Path, Path]:
    root = get_settings().staging_root
    return root / f"{task_id}.{ext}", root / f"{task_id}.{ext}.json"


def reuse_staged(run: TaskRun, ext: str) -> Take | None:
    """Media generated by an earlier attempt whose delivery failed: deliver them, don't redo."""
    media, meta = _staging(run.task_id, ext)
    if not (media.exists() and meta.exists()):
        return None
    saved = json.loads(meta.read_text())
    run.report(0.85, "reusing_generated_media", force=True)
    return Take(
        media.read_bytes(), saved["media_meta"], {**saved["provenance"], "reused_media": True}
    )


def stage(run: TaskRun, ext: str, take: Take) -> Take:
    """Keep generated media until delivered: a retry after a failed delivery skips generation."""
    media, meta = _staging(run.task_id, ext)
    media.parent.mkdir(parents=True, exist_ok=True)
    for path, content in (
        (media, take.data),
        (meta, json.dumps({"media_meta": take.media_meta, "provenance": take.provenance}).encode()),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)  # the metadata file last: its presence means the media are whole
    return take


def deliver(
    run: TaskRun,
    media_store: MediaStore,
    state: TaskStateResource,
    payload_cms: PayloadCMS,
    kind: str,
    ext: str,
    take: Take,
) -> dg.MaterializeResult:
    """Store the take's media, register it in the CMS, record the result, describe the take."""
    data, media_meta, provenance = take.data, take.media_meta, take.provenance
    faults.maybe_inject(run.task, "upload")
    run.report(0.9, "uploading", force=True)
    key = media_key(run.task["project_id"], kind, run.task_id, ext)
    started = time.monotonic()
    media_store.put(key, data, CONTENT_TYPES[ext])
    upload_s = time.monotonic() - started
    url = media_store.url(key)
    meta = {**media_meta, "file_size": len(data)}
    payload_id = None
    if payload_cms.enabled:
        run.report(0.95, "registering_media", force=True)
        fields = generation_metadata(
            run.task["project_id"], run.task_id, run.task["task_type"], key, meta
        )
        cms_started = time.monotonic()
        # Payload keeps the link for good: never a presigned URL that expires.
        payload_id = payload_cms.register(
            stable_media_url(get_settings(), key),
            data,
            key.rsplit("/", 1)[1],
            CONTENT_TYPES[ext],
            fields,
        )
        provenance = {**provenance, "cms_seconds": round(time.monotonic() - cms_started, 3)}
    result = {"media_key": key, "media_url": url, "payload_media_id": payload_id, "metadata": meta}
    state.save_result(run.task_id, result)
    run.report(0.98, "upload_complete", force=True)
    md: dict[str, Any] = {
        "task_id": run.task_id,
        "media_url": dg.MetadataValue.url(url),
        "media_key": key,
        "payload_media_id": payload_id or "",
        **{k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)},
        **provenance,
        "upload_seconds": round(upload_s, 3),
        "total_seconds": round(time.monotonic() - run.started, 3),
        "worker": worker_state.current.worker_id if worker_state.current else "in-process",
    }
    for path in _staging(run.task_id, ext):
        path.unlink(missing_ok=True)
    return dg.MaterializeResult(metadata=md)
