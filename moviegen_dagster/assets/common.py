"""What every media asset does around generation: task lookup, progress, errors, provenance."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import psycopg

from moviegen_dagster import faults, store, tags, worker_state
from moviegen_dagster.backoff import retry_while_unreachable
from moviegen_dagster.coordinator import bound_task_id, closed_task_message
from moviegen_dagster.generation.common import current_memory_mode, memory_mode
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.ids import CONTENT_TYPES, media_key
from moviegen_dagster.lineage import (
    INPUT_ASSET_BY_GROUP,
    TAKE_CODE_VERSION,
    describe_lineage,
    fetched_inputs,
    record_input,
    start_inputs,
)
from moviegen_dagster.media_urls import stable_media_url
from moviegen_dagster.previews import Preview
from moviegen_dagster.settings import Settings, get_settings
from moviegen_dagster.step_retry import retry_when_database_lost
from resources.media_store import MediaStore
from resources.payload import PayloadCMS, generation_metadata
from resources.task_state import ProgressReporter, TaskStateResource

log = logging.getLogger("moviegen.assets")

# Out-of-memory is the one error worth retrying in place. task_run raises RetryRequested
# with its own growing, jittered delay (MOVIEGEN_OOM_*), which takes precedence; this policy
# only covers an error escaping task_run, and shows the step's retry settings in the UI.
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
        # A step lost to an unreachable database (not to its task) is retried as a run.
        hooks={retry_when_database_lost},
        group_name=group_name,
        kinds=kinds,
        metadata={"partition_key": f"{{project_id}}/{{{subject}}}"},
        # Lineage: the take's inputs (source asset of the same partition), see lineage.py.
        deps=[INPUT_ASSET_BY_GROUP[group_name]],
        code_version=TAKE_CODE_VERSION,
    )


@dataclass
class TaskRun:
    """The task a run carries, with its progress reporter."""

    task: dict[str, Any]
    report: ProgressReporter | _BestEffortProgress
    started: float
    # The step's context: deliver() records the take's inputs on their source asset with it.
    context: Any
    state: TaskStateResource

    def preview(self, preview: Preview) -> None:
        """Publish a preview of the take; a database error loses this preview only."""
        try:
            self.state.save_preview(self.task_id, preview)
        except psycopg.Error as exc:
            log.warning("preview %r not recorded: %s", preview.label, exc)

    @property
    def task_id(self) -> str:
        """The task's id as a string."""
        return str(self.task["task_id"])


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError"


@contextmanager
def task_run(context: dg.AssetExecutionContext, state: TaskStateResource) -> Iterator[TaskRun]:
    """Load the run's task, claim the worker slot, and turn errors into clear task errors.

    Each execution of the step is one attempt in the task's history. Out-of-memory is
    retried inside the run (a new step attempt) after freeing GPU memory, with a growing,
    jittered delay and in low-memory mode; other errors fail the task at once.
    """
    # Runs launched outside the API (UI, backfills) are bound to a task here unless the run
    # coordinator already did; a UI re-execution of a failed task reopens it.
    task_id = bound_task_id(context, state.database_url)
    task = state.load(task_id)
    if task["status"] not in ("queued", "processing"):
        # Cancelled (or otherwise finished) before this run started: never do the work.
        raise dg.Failure(closed_task_message(task), allow_retries=False)
    settings = get_settings()
    step_retry = context.retry_number  # op retries in this run: only out-of-memory retries
    low_memory = step_retry > 0
    run_attempt = int(context.run.tags.get(tags.RETRY_NUMBER, "0")) + 1
    faults.maybe_lose_database(task, run_attempt)
    attempt = _db_retry(
        lambda: _attempt_start(state, task_id, context.run_id, run_attempt, low_memory),
        "record the attempt",
    )
    task = {**task, "attempt": attempt, "low_memory": low_memory}
    # Claimed before the first log line, so every line of the attempt carries the task id.
    worker_state.claim(task_id, context.run_id)
    context.log.info(
        f"task {task_id}: attempt {attempt} (run attempt {run_attempt}, "
        f"step attempt {step_retry + 1}){' in low-memory mode' if low_memory else ''}"
    )
    report = _BestEffortProgress(state.reporter(context.op_execution_context, task_id))
    completed = False
    error: str | None = "interrupted"
    try:
        report(0.01, "starting", force=True)
        with memory_mode(low_memory):
            faults.maybe_inject(task, "generate", attempt, should_stop=lambda: should_stop(context))
            start_inputs()
            yield TaskRun(
                task=task, report=report, started=time.monotonic(), context=context, state=state
            )
        completed = True
        error = None
    except GenerationCancelled as exc:
        error = "cancelled"
        raise dg.Failure("cancelled while generating", allow_retries=False) from exc
    except dg.Failure as exc:
        error = str(exc.description or exc)
        raise
    except Exception as exc:
        if _is_oom(exc):
            error = f"out_of_memory: {exc}"
            _free_gpu_memory()
            raise _oom_retry_or_fail(context, state, task_id, attempt, exc, settings) from exc
        if isinstance(exc, ValueError):  # bad inputs, named by fetch and validation
            message = str(exc)
            error = f"invalid_input: {message}"
            _db_retry(lambda: state.save_error(task_id, "invalid_input", message), "save error")
            raise dg.Failure(message, allow_retries=False) from exc
        # Delivery errors already say which step, object or collection failed.
        code = DELIVERY_ERRORS.get(type(exc).__name__, "generation_failed")
        message = f"{type(exc).__name__}: {exc}"
        error = f"{code}: {message}"
        _db_retry(lambda: state.save_error(task_id, code, message), "save error")
        raise dg.Failure(f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
    finally:
        worker_state.release(completed)
        try:
            _db_retry(lambda: _attempt_end(state, task_id, attempt, error), "close the attempt")
        except Exception:
            context.log.warning(f"could not record the end of attempt {attempt}")


def oom_delay(retry: int, settings: Settings) -> float:
    """Seconds before out-of-memory retry number `retry` (1-based): doubling, capped, jittered."""
    base = min(settings.oom_retry_base_seconds * 2 ** (retry - 1), settings.oom_retry_max_seconds)
    jitter = settings.oom_retry_jitter
    # Jitter spreads the retries of several slots that ran out of memory on one GPU together.
    return round(max(0.0, base * (1 + random.uniform(-jitter, jitter))), 3)


def _oom_retry_or_fail(
    context: dg.AssetExecutionContext,
    state: TaskStateResource,
    task_id: str,
    attempt: int,
    exc: BaseException,
    settings: Settings,
) -> Exception:
    """The exception that retries the step in low-memory mode, or fails the task for good."""
    retries_done = context.retry_number
    if retries_done >= settings.oom_max_retries:
        message = (
            f"out of memory: GPU out of memory on {retries_done + 1} attempt(s) of this run, "
            f"the last in low-memory mode: {exc}"
            if retries_done
            else f"out of memory: GPU out of memory (retries disabled): {exc}"
        )
        _db_retry(lambda: state.save_error(task_id, "out_of_memory", message), "save error")
        context.log.error(f"task {task_id}: {message}")
        return dg.Failure(message, allow_retries=False)
    wait = oom_delay(retries_done + 1, settings)
    context.log.warning(
        f"task {task_id}: attempt {attempt} ran out of GPU memory; memory freed, retrying in "
        f"{wait:.2f}s in low-memory mode (retry {retries_done + 1} of {settings.oom_max_retries})"
    )
    return dg.RetryRequested(max_retries=settings.oom_max_retries, seconds_to_wait=wait)


def _attempt_start(
    state: TaskStateResource, task_id: str, run_id: str, run_attempt: int, low_memory: bool
) -> int:
    with psycopg.connect(state.database_url, autocommit=True) as conn:
        return store.start_attempt(conn, task_id, run_id, run_attempt, low_memory)


def _attempt_end(state: TaskStateResource, task_id: str, attempt: int, error: str | None) -> None:
    with psycopg.connect(state.database_url, autocommit=True) as conn:
        store.end_attempt(conn, task_id, attempt, error[:500] if error else None)


T = TypeVar("T")

# How long a step keeps retrying a write it cannot lose while PostgreSQL is unreachable.
DB_RETRY_SECONDS = 60.0


def _db_retry(fn: Callable[[], T], what: str) -> T:
    """Run a database write, retrying with back-off through a short PostgreSQL outage."""
    return retry_while_unreachable(fn, (psycopg.OperationalError,), DB_RETRY_SECONDS, what)


class _BestEffortProgress:
    """Progress reports that skip, rather than fail the step, while the database is down."""

    def __init__(self, inner: ProgressReporter) -> None:
        self._inner = inner

    @property
    def value(self) -> float:
        """The highest progress reported so far."""
        return self._inner.value

    def __call__(self, progress: float, step: str, force: bool = False) -> None:
        """Report progress; a database error loses this report only."""
        try:
            self._inner(progress, step, force=force)
        except psycopg.OperationalError as exc:
            log.warning("progress %.2f %s not recorded: %s", progress, step, exc)


def _free_gpu_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass


def should_stop(context: dg.AssetExecutionContext) -> bool:
    """True once the run is being cancelled (checked between denoising steps)."""
    run = context.instance.get_run_by_id(context.run_id)
    # FAILURE while the step still runs: run monitoring gave up on it (e.g. max runtime).
    return run is not None and run.status.value in ("CANCELING", "CANCELED", "FAILURE")


def fetch_input(url: str, what: str, accept: tuple[str, ...]) -> bytes:
    """Fetch one URL input under the SSRF rules; a refusal fails the task naming the input."""
    from moviegen_dagster.fetch import Allowlist, FetchError, fetch

    settings = get_settings()
    try:
        content = fetch(
            url,
            what,
            Allowlist.parse(settings.url_allowlist),
            settings.fetch_max_bytes,
            timeout=settings.fetch_timeout_seconds,
            accept=accept,
        ).content
    except FetchError as exc:
        raise InputError(str(exc)) from exc
    record_input(what, url, content)  # the take's provenance: URL and content hash
    return content


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
    # The inputs travel with the staged media: a re-delivery still knows what went in.
    take.provenance = {**take.provenance, "inputs": fetched_inputs()}
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
    _db_retry(lambda: state.save_result(run.task_id, result), "save the result")
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
        # Which attempt produced the take, and what low-memory mode (after an out-of-memory
        # error) applied to get it through.
        "attempt": int(run.task.get("attempt", 1)),
        "low_memory": bool(run.task.get("low_memory", False)),
        "memory_savings": ", ".join(current_memory_mode().applied),
    }
    lineage_md, data_version = describe_lineage(run, state, ext, key, meta, provenance)
    md.update(lineage_md)
    for path in _staging(run.task_id, ext):
        path.unlink(missing_ok=True)
    return dg.MaterializeResult(metadata=md, data_version=data_version)
