"""The `moviegen` client commands for people (no --json) against the app on a real database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from api_helpers import Project, set_task, submit
from fastapi.testclient import TestClient

from moviegen_dagster import cli, cli_client


@pytest.fixture
def run_cli(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """Run `moviegen ...` in-process, its HTTP going to the app under test."""

    def init(self: cli_client.ApiClient, base_url: str, api_key: str | None, **_: Any) -> None:
        self.http = TestClient(client.app, headers={"X-API-Key": api_key or ""})

    monkeypatch.setattr(cli_client.ApiClient, "__init__", init)
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal width

    def run(*argv: str, key: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main([*argv, "--api-key", key])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_human_output(
    run_cli: Any, client: TestClient, conn: psycopg.Connection[Any], project: Project
) -> None:
    task_id = submit(client, project, task_type="generate_image")["task_id"]
    code, out, _ = run_cli("status", task_id, key=project.key)
    assert code == 0 and task_id in out and "queued" in out and "waiting_in_queue" in out

    code, out, _ = run_cli("list", "--project", project.project_id, key=project.key)
    assert code == 0 and task_id in out and "generate_image" in out and "1 task(s)" in out

    code, out, _ = run_cli("workers", key=project.key)
    assert code == 0 and "workers alive" in out

    set_task(conn, task_id, status="failed", error={"code": "x", "message": "it broke"})
    # --wait on a finished task: the stream answers at once; exit 1 for a failed task.
    code, out, err = run_cli("status", task_id, "--wait", key=project.key)
    assert code == 1 and "failed" in out and "error: it broke" in out

    code, out, _ = run_cli("retry", task_id, key=project.key)
    assert code == 0 and "queued" in out and "attempt 2" in out
    code, out, _ = run_cli("cancel", task_id, key=project.key)
    assert code == 0 and "cancelled" in out

    # API errors: exit 3 and the API's own message on stderr.
    code, out, err = run_cli("cancel", task_id, key="not-a-key")
    assert code == 3 and "HTTP 401" in err and "invalid API key" in err
    code, _, err = run_cli(
        "submit",
        "--type",
        "generate_image",
        "--project",
        project.project_id,
        "--data",
        '{"character_description": "x", "unknown_field": 1}',
        key=project.key,
    )
    assert code == 3 and "HTTP 400" in err and "unknown_field" in err


def test_preview_is_saved_to_a_file(
    run_cli: Any,
    client: TestClient,
    conn: psycopg.Connection[Any],
    project: Project,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from moviegen_dagster import store
    from moviegen_dagster.previews import waveform_preview

    task_id = submit(client, project, task_type="process_audio")["task_id"]
    code, _, err = run_cli("preview", task_id, key=project.key)
    assert code == 3 and "no preview yet" in err

    set_task(conn, task_id, status="processing")
    wave = waveform_preview(np.sin(np.linspace(0, 60, 8000)), "voice")
    assert store.save_preview(conn, task_id, wave)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli("preview", task_id, key=project.key)
    saved = tmp_path / f"{task_id}-preview.png"
    assert code == 0 and saved.name in out and "waveform: voice" in out
    assert saved.read_bytes() == wave.data
