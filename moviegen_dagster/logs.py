"""Structured logs: one JSON object per line from every MovieGen process.

Every record carries `time`, `level`, `logger`, `message` and `process` (api, worker-gpu_light,
...), plus `task_id` and `run_id` whenever the process knows which task it is working on:
bound for the duration of an API request on a task, or the run a worker slot is executing.
`MOVIEGEN_LOG_FORMAT=text` keeps the classic human-readable lines.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from moviegen_dagster import worker_state
from moviegen_dagster.settings import Settings

# task_id / run_id of the work this thread or request is doing.
_context: ContextVar[dict[str, str]] = ContextVar("moviegen_log_context", default={})  # noqa: B039 - never mutated

JSON_FIELDS = ["asctime", "levelname", "name", "message"]
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process_name)s] %(message)s"
# Libraries that log every request or migration step at INFO: kept to warnings.
QUIET_LOGGERS = ("httpx", "httpcore", "alembic")


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Attach fields (task_id, run_id) to every record logged inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Adds the process name, and task_id / run_id where known, to each record."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        record.process_name = self.process_name
        bound = _context.get()
        slot = worker_state.current
        for key in ("task_id", "run_id"):
            if getattr(record, key, None) is None:
                value = bound.get(key)
                if value is None and slot is not None:
                    value = getattr(slot, f"current_{key}")
                if value is not None:
                    setattr(record, key, value)
        return True


class MovieGenJsonFormatter(JsonFormatter):
    """python-json-logger with MovieGen's field names and ISO-8601 UTC times."""

    def __init__(self) -> None:
        super().__init__(
            JSON_FIELDS,
            rename_fields=RENAMED,
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            json_ensure_ascii=False,
        )


class LogStream(io.TextIOBase):
    """A stdout/stderr replacement turning each printed line into a log record.

    Unlike Celery's LoggingProxy it keeps `fileno()` (the real descriptor), which
    `faulthandler` and subprocess plumbing need; partial lines (progress bars) are kept until
    the newline or the next flush.
    """

    encoding = "utf-8"

    def __init__(self, logger: logging.Logger, level: int, fd: int) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._fd = fd
        self._pending = ""
        self._lock = threading.RLock()
        self._local = threading.local()

    def writable(self) -> bool:
        """Always."""
        return True

    def isatty(self) -> bool:
        """Never a terminal (no colour codes)."""
        return False

    def fileno(self) -> int:
        """The original descriptor (raw writes bypass the records)."""
        return self._fd

    def write(self, text: str) -> int:  # type: ignore[override]
        """Log every complete line; keep the rest for later."""
        if getattr(self._local, "busy", False):
            return len(text)  # a handler printing while logging: drop, never recurse
        with self._lock:
            self._local.busy = True
            try:
                *lines, self._pending = (self._pending + text).split("\n")
                for line in lines:
                    self._emit(line)
            finally:
                self._local.busy = False
        return len(text)

    def flush(self) -> None:
        """Log a pending partial line (a progress bar update)."""
        with self._lock:
            if self._pending and not getattr(self._local, "busy", False):
                line, self._pending = self._pending, ""
                self._local.busy = True
                try:
                    self._emit(line)
                finally:
                    self._local.busy = False

    def _emit(self, line: str) -> None:
        text = line.replace("\r", " ").strip()
        if text:
            self._logger.log(self._level, text)


def redirect_stdio(logger_name: str, level: int = logging.INFO) -> None:
    """Send what this process prints to stdout/stderr through logging (call after logging
    is configured: the handler keeps the real stderr)."""
    logger = logging.getLogger(logger_name)
    sys.stdout = LogStream(logger, level, sys.__stdout__.fileno())  # type: ignore[union-attr]
    sys.stderr = LogStream(logger, level, sys.__stderr__.fileno())  # type: ignore[union-attr]


def make_handler(process_name: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler with the context filter and the chosen format."""
    if stream is None:
        stream = sys.__stderr__ if isinstance(sys.stderr, LogStream) else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(process_name))
    if fmt == "json":
        handler.setFormatter(MovieGenJsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(
    process_name: str, settings: Settings, stream: IO[str] | None = None
) -> logging.Handler:
    """Route every logger of this process (uvicorn's and Celery's too) to one handler."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(process_name, settings.log_format, stream)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Library warnings become log records instead of raw stderr text.
    logging.captureWarnings(True)
    return handler


def uvicorn_log_config(process_name: str, fmt: str, level: str) -> dict[str, Any]:
    """A dictConfig for `uvicorn --log-config` (uvicorn configures logging before the app)."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.MovieGenJsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter", "process_name": process_name}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["context"],
                "formatter": "default",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True, "level": level}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
    }


def write_uvicorn_log_config(path: Path, process_name: str, fmt: str, level: str) -> Path:
    """Write the uvicorn logging config as JSON; returns the path for `--log-config`."""
    path.write_text(json.dumps(uvicorn_log_config(process_name, fmt, level), indent=2))
    return path
