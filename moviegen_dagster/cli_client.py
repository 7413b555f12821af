"""The `moviegen` HTTP client commands: submit, list, status, cancel, retry, preview, workers.

Exit codes: 0 ok, 1 the awaited task failed or was cancelled, 2 usage, 3 HTTP/API error.
`--json` prints machine output only on stdout; progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3

TERMINAL = ("completed", "failed", "cancelled")
TASK_TYPES = ("generate_video", "generate_image", "process_audio")
# Polling interval when the event stream is unavailable.
POLL_SECONDS = 1.0
# Consecutive stream failures after which --wait polls the status instead.
MAX_STREAM_FAILURES = 3


class UsageError(Exception):
    """Bad flags or input files (exit 2)."""


class ApiFailure(Exception):
    """The API answered an error, or could not be reached (exit 3)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events of a text/event-stream, line by line (comments and keep-alives skipped)."""
    event, last_id = "message", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value


class ApiClient:
    """The v1 API over HTTP with one key."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close connections."""
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One successful response, or ApiFailure with the API's own message."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiFailure(f"cannot reach the API at {self.http.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            raise _failure(resp)
        return resp

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the JSON body, or ApiFailure with the API's own message."""
        resp = self.request(method, path, **kwargs)
        return resp.json() if resp.content else None

    def events(self, task_id: str, last_event_id: str | None) -> Iterator[SseEvent]:
        """The task's event stream (raises ApiFailure when it cannot be opened)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        # No read timeout: the server sends a keep-alive comment every 15 s.
        timeout = httpx.Timeout(30.0, read=60.0)
        with self.http.stream(
            "GET", f"/api/v1/tasks/{task_id}/events", headers=headers, timeout=timeout
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise _failure(resp)
            yield from parse_sse(resp.iter_lines())


def _failure(resp: httpx.Response) -> ApiFailure:
    """The API's error message, from the common error shape when it has one."""
    try:
        err = resp.json()["error"]
        message = err["message"]
        if err.get("field") and err["field"] not in message:
            message = f"{err['field']}: {message}"
        return ApiFailure(f"HTTP {resp.status_code}: {message}", resp.status_code, err["code"])
    except (ValueError, KeyError, TypeError):
        return ApiFailure(f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code)


def follow(
    client: ApiClient,
    task_id: str,
    on_status: Callable[[dict[str, Any]], None],
    timeout: float | None = None,
) -> dict[str, Any]:
    """Follow a task until terminal over SSE (resuming with Last-Event-ID), else by polling."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: dict[str, Any] | None = None
    last_id: str | None = None
    failures = 0
    while failures < MAX_STREAM_FAILURES:
        try:
            for ev in client.events(task_id, last_id):
                last_id = ev.id or last_id
                if ev.event == "status":
                    last = ev.json()
                    on_status(last)
                elif ev.event == "end":
                    if last is not None and last["status"] in TERMINAL:
                        return last
                    # Resumed after the terminal event: one status read has the final state.
                    return _poll(client, task_id, on_status, deadline)
                if deadline is not None and time.monotonic() > deadline:
                    raise ApiFailure(f"task {task_id} did not finish within {timeout:.0f}s")
            failures += 1
            if last is not None and last["status"] in TERMINAL:
                return last
        except ApiFailure as exc:
            if exc.status is not None:
                raise  # a real answer (404, 401): polling would get the same
            failures += 1
        except httpx.HTTPError:
            failures += 1
    return _poll(client, task_id, on_status, deadline)


def _poll(
    client: ApiClient,
    task_id: str,
    on_status: Callable[[dict[str, Any]], None],
    deadline: float | None,
) -> dict[str, Any]:
    while True:
        doc: dict[str, Any] = client.call("GET", f"/api/v1/tasks/{task_id}/status")
        on_status(doc)
        if doc["status"] in TERMINAL:
            return doc
        if deadline is not None and time.monotonic() > deadline:
            raise ApiFailure(f"task {task_id} did not finish within the timeout")
        time.sleep(POLL_SECONDS)


# -- commands ----------------------------------------------------------------------------


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: not valid JSON ({exc.msg} at position {exc.pos})") from exc


def _json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    return _json_arg(text, f"{what} ({path})")


def submission_body(args: argparse.Namespace) -> dict[str, Any]:
    """The submit body from --file, or from the individual flags (flags override the file)."""
    body: dict[str, Any] = {}
    if args.file:
        loaded = _json_file(args.file, "--file")
        if not isinstance(loaded, dict):
            raise UsageError("--file: the body must be a JSON object")
        body.update(loaded)
    if args.data and args.data_file:
        raise UsageError("--data and --data-file are mutually exclusive")
    if args.data:
        body["task_data"] = _json_arg(args.data, "--data")
    elif args.data_file:
        body["task_data"] = _json_file(args.data_file, "--data-file")
    if args.metadata:
        body["metadata"] = _json_arg(args.metadata, "--metadata")
    for key, value in (
        ("task_type", args.type),
        ("project_id", args.project),
        ("priority", args.priority),
        ("callback_url", args.callback_url),
    ):
        if value is not None:
            body[key] = value
    required = (("--type", "task_type"), ("--project", "project_id"), ("--data", "task_data"))
    missing = [flag for flag, key in required if key not in body]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give a whole body with --file)")
    return body


class Output:
    """Where results and progress go: JSON on stdout for scripts, rich text otherwise."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def result(self, doc: Any, human: Callable[[Any], None]) -> None:
        """Print a command's result."""
        if self.as_json:
            sys.stdout.write(json.dumps(doc, default=str) + "\n")
            sys.stdout.flush()
        else:
            human(doc)

    def status(self, doc: dict[str, Any]) -> None:
        """A status document for people."""
        line = f"{doc['task_id']}  {doc['status']}  {doc['progress'] * 100:.0f}%  "
        line += f"{doc['current_step']}  attempt {doc['attempt']}"
        self.out.print(line)
        if doc.get("result"):
            self.out.print(f"  media: {doc['result'].get('media_url')}")
        if doc.get("error"):
            self.out.print(f"  error: {doc['error']}")


def _wait(client: ApiClient, task_id: str, output: Output, timeout: float | None) -> dict[str, Any]:
    """Follow the task with a progress bar on stderr."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=output.err,
        transient=output.as_json,
    ) as bar:
        handle = bar.add_task("queued", total=1.0)

        def show(doc: dict[str, Any]) -> None:
            bar.update(
                handle,
                completed=float(doc["progress"]),
                description=f"{doc['status']}: {doc['current_step']}",
            )

        return follow(client, task_id, show, timeout)


def cmd_submit(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Submit a task; with --wait, follow it to the end."""
    body = submission_body(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    accepted = client.call("POST", "/api/v1/tasks/submit", json=body, headers=headers)
    if not args.wait:
        output.result(accepted, lambda d: output.out.print(f"{d['task_id']}  {d['status']}"))
        return EXIT_OK
    if not output.as_json:
        output.err.print(f"submitted {accepted['task_id']}")
    final = _wait(client, accepted["task_id"], output, args.timeout)
    output.result(final, output.status)
    return EXIT_OK if final["status"] == "completed" else EXIT_TASK_FAILED


def cmd_status(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Show a task's status (with --wait, follow it to the end)."""
    if args.wait:
        final = _wait(client, args.task_id, output, args.timeout)
        output.result(final, output.status)
        return EXIT_OK if final["status"] == "completed" else EXIT_TASK_FAILED
    doc = client.call("GET", f"/api/v1/tasks/{args.task_id}/status")
    output.result(doc, output.status)
    return EXIT_OK


def cmd_cancel(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Cancel a task."""
    doc = client.call("DELETE", f"/api/v1/tasks/{args.task_id}/cancel")
    output.result(doc, output.status)
    return EXIT_OK


def cmd_retry(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Retry a failed task (same id); with --wait, follow it to the end."""
    doc = client.call("POST", f"/api/v1/tasks/{args.task_id}/retry")
    if args.wait:
        doc = _wait(client, args.task_id, output, args.timeout)
        output.result(doc, output.status)
        return EXIT_OK if doc["status"] == "completed" else EXIT_TASK_FAILED
    output.result(doc, output.status)
    return EXIT_OK


def cmd_list(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """One page of a project's tasks, newest first."""
    params: dict[str, Any] = {"page": args.page, "limit": args.limit}
    if args.status:
        params["status"] = args.status
    if args.type:
        params["task_type"] = args.type
    page = client.call("GET", f"/api/v1/projects/{args.project}/tasks", params=params)

    def human(doc: dict[str, Any]) -> None:
        from rich.table import Table

        table = Table(title=f"{doc['project_id']}: page {doc['page']}/{doc['pages']}")
        for col in ("task_id", "type", "status", "progress", "step", "created"):
            table.add_column(col)
        for t in doc["tasks"]:
            table.add_row(
                t["task_id"],
                t["task_type"],
                t["status"],
                f"{t['progress'] * 100:.0f}%",
                t["current_step"],
                t["created_at"],
            )
        output.out.print(table)
        output.out.print(f"{doc['total']} task(s)")

    output.result(page, human)
    return EXIT_OK


def cmd_workers(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Workers, their state and load."""
    doc = client.call("GET", "/api/v1/workers/status")

    def human(d: dict[str, Any]) -> None:
        from rich.table import Table

        table = Table(title=f"{d['active_workers']}/{d['total_workers']} workers alive")
        for col in ("worker_id", "type", "status", "task", "gpu", "done"):
            table.add_column(col)
        for w in d["workers"]:
            gpu = "-" if w["gpu_utilization"] is None else f"{w['gpu_utilization'] * 100:.0f}%"
            table.add_row(
                w["worker_id"],
                w["worker_type"],
                w["status"],
                w["current_task_id"] or "-",
                gpu,
                str(w["tasks_completed"]),
            )
        output.out.print(table)

    output.result(doc, human)
    return EXIT_OK


def cmd_preview(client: ApiClient, args: argparse.Namespace, output: Output) -> int:
    """Save a task's latest preview (a frame, the image or a waveform) to a file."""
    resp = client.request("GET", f"/api/v1/tasks/{args.task_id}/preview")
    media_type = resp.headers.get("content-type", "")
    ext = ".png" if media_type.startswith("image/png") else ".jpg"
    path = Path(args.output or f"{args.task_id}-preview{ext}")
    path.write_bytes(resp.content)
    doc = {
        "task_id": args.task_id,
        "file": str(path),
        "kind": resp.headers.get("x-preview-kind"),
        "label": resp.headers.get("x-preview-label"),
        "media_type": media_type,
        "bytes": len(resp.content),
    }
    output.result(doc, lambda d: output.out.print(f"{d['file']}  {d['kind']}: {d['label']}"))
    return EXIT_OK


COMMANDS: dict[str, Callable[[ApiClient, argparse.Namespace, Output], int]] = {
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "list": cmd_list,
    "preview": cmd_preview,
    "workers": cmd_workers,
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_client_commands(sub: Any, default_api_url: str) -> None:
    """Register the HTTP client subcommands on the `moviegen` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        default=os.environ.get("MOVIEGEN_API_URL", default_api_url),
        help="API base URL (env MOVIEGEN_API_URL; default %(default)s)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("MOVIEGEN_API_KEY"),
        help="API key (env MOVIEGEN_API_KEY)",
    )
    common.add_argument("--json", action="store_true", help="machine output on stdout only")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="follow the task until it ends")
    waiting.add_argument("--timeout", type=float, default=None, help="give up after N seconds")

    s = sub.add_parser("submit", parents=[common, waiting], help="submit a generation task")
    s.add_argument("--file", help="a whole JSON request body (other flags override it)")
    s.add_argument("--type", choices=TASK_TYPES, help="task_type")
    s.add_argument("--project", help="project_id")
    s.add_argument("--data", help="task_data as a JSON object")
    s.add_argument("--data-file", help="task_data from a JSON file")
    s.add_argument("--metadata", help="metadata as a JSON object")
    s.add_argument("--priority", type=int, help="1 (most urgent) to 10; default 5")
    s.add_argument("--callback-url", help="URL receiving the terminal state")
    s.add_argument("--idempotency-key", help="Idempotency-Key header (safe resubmission)")
    for name, helptext, wait in (
        ("status", "show a task's status", True),
        ("cancel", "cancel a queued or processing task", False),
        ("retry", "retry a failed task", True),
    ):
        parents = [common, waiting] if wait else [common]
        p = sub.add_parser(name, parents=parents, help=helptext)
        p.add_argument("task_id")
    ls = sub.add_parser("list", parents=[common], help="list a project's tasks")
    ls.add_argument("--project", required=True)
    ls.add_argument("--status", choices=("queued", "processing", *TERMINAL))
    ls.add_argument("--type", choices=TASK_TYPES)
    ls.add_argument("--page", type=_positive_int, default=1)
    ls.add_argument("--limit", type=_positive_int, default=20)
    pv = sub.add_parser("preview", parents=[common], help="save a task's latest preview image")
    pv.add_argument("task_id")
    pv.add_argument("--output", "-o", help="file to write (default TASK_ID-preview.jpg/.png)")
    sub.add_parser("workers", parents=[common], help="show the workers")


def run(args: argparse.Namespace) -> int:
    """Run one client command; maps failures onto the documented exit codes."""
    output = Output(args.json)
    if not args.api_key:
        output.err.print("moviegen: no API key (set MOVIEGEN_API_KEY or pass --api-key)")
        return EXIT_USAGE
    client = ApiClient(args.api_url, args.api_key)
    try:
        return COMMANDS[args.cmd](client, args, output)
    except UsageError as exc:
        output.err.print(f"moviegen {args.cmd}: {exc}", markup=False)
        return EXIT_USAGE
    except ApiFailure as exc:
        output.err.print(f"moviegen {args.cmd}: {exc}", markup=False)
        if args.json:
            error = {"error": {"status": exc.status, "code": exc.code, "message": str(exc)}}
            sys.stdout.write(json.dumps(error) + "\n")
        return EXIT_API
    finally:
        client.close()
