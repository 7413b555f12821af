"""JSON log lines: fields, task/run ids from the request or the worker slot, uvicorn config."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from api.middleware import TaskLogContextMiddleware
from moviegen_dagster import logs, worker_state
from moviegen_dagster.settings import Settings


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through MovieGen's JSON handler into a buffer."""
    buf = io.StringIO()
    logger = logging.getLogger("moviegen.test_logs")
    handler = logs.make_handler("api", "json", buf)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buf
    logger.removeHandler(handler)


def _records(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_fields_and_bound_ids(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = capture
    logger.info("outside")
    with logs.bind(task_id="t-1", run_id="r-1"):
        logger.warning("inside %s", "a task", extra={"attempt": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    outside, inside, failed = _records(buf)
    assert outside["message"] == "outside" and outside["level"] == "INFO"
    assert outside["logger"] == "moviegen.test_logs" and outside["process_name"] == "api"
    assert "task_id" not in outside and outside["time"].endswith("+0000")
    assert inside["message"] == "inside a task"
    assert (inside["task_id"], inside["run_id"], inside["attempt"]) == ("t-1", "r-1", 2)
    assert "ValueError: boom" in failed["exc_info"]


def test_worker_slot_supplies_ids(
    capture: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, buf = capture
    slot = worker_state.WorkerSlot(worker_id="w", worker_type="gpu_light")
    monkeypatch.setattr(worker_state, "current", slot)
    slot.current_run_id, slot.current_task_id = "run-9", "task-9"
    logger.info("executing")
    slot.current_run_id = slot.current_task_id = None
    logger.info("idle")
    executing, idle = _records(buf)
    assert (executing["task_id"], executing["run_id"]) == ("task-9", "run-9")
    assert "task_id" not in idle and "run_id" not in idle


def test_middleware_binds_the_task_of_the_path(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buf = capture
    task_id = "5f559cfc-96c9-4a93-8b4f-f95b306a8aa4"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        logger.info("handling %s", scope["path"])

    middleware = TaskLogContextMiddleware(app)
    for path in (f"/api/v1/tasks/{task_id}/events", "/api/v1/health"):
        asyncio.run(middleware({"type": "http", "path": path}, None, None))
    on_task, other = _records(buf)
    assert on_task["task_id"] == task_id
    assert "task_id" not in other


def test_uvicorn_config_is_a_valid_dict_config(tmp_path: Any) -> None:
    path = logs.write_uvicorn_log_config(tmp_path / "log.json", "api", "json", "INFO")
    config = json.loads(path.read_text())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        handler = root.handlers[-1]
        assert isinstance(handler.formatter, logs.MovieGenJsonFormatter)
        assert logging.getLogger("httpx").level == logging.WARNING
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_text_format(tmp_path: Any) -> None:
    buf = io.StringIO()
    settings = Settings(MOVIEGEN_LOG_FORMAT="text", MOVIEGEN_HOME=tmp_path)  # type: ignore[call-arg]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure_logging("worker-gpu_light", settings, buf)
        logging.getLogger("moviegen.x").info("plain")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.captureWarnings(False)
        for name in logs.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert buf.getvalue().rstrip().endswith("INFO moviegen.x [worker-gpu_light] plain")


def test_log_stream_turns_printed_lines_into_records(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    import faulthandler
    import signal

    logger, buf = capture
    stream = logs.LogStream(logger, logging.INFO, sys.__stderr__.fileno())
    print("first line\nsecond line", file=stream)
    stream.write("\r 40%|████")  # a progress bar update: no newline
    assert [r["message"] for r in _records(buf)] == ["first line", "second line"]
    stream.flush()
    assert _records(buf)[-1]["message"] == "40%|████"
    # Code that needs a real descriptor (faulthandler, subprocesses) still gets one.
    assert stream.fileno() == sys.__stderr__.fileno()
    faulthandler.register(signal.SIGUSR2, file=stream, all_threads=True, chain=True)
    faulthandler.unregister(signal.SIGUSR2)
