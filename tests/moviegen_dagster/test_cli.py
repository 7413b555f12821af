"""The `moviegen` client commands without a server: parsing, bodies, SSE, exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from moviegen_dagster import cli, keys
from moviegen_dagster.cli_client import (
    EXIT_API,
    EXIT_USAGE,
    UsageError,
    parse_sse,
    submission_body,
)
from moviegen_dagster.settings import get_settings
from moviegen_dagster.stack import free_port
from tests.pg_support import throwaway_database


def _submit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    cli.add_client_commands(sub, "http://127.0.0.1:1")
    return parser.parse_args(["submit", *argv])


def test_body_from_flags() -> None:
    args = _submit_args(
        "--type",
        "generate_image",
        "--project",
        "detective_series_001",
        "--data",
        '{"character_description": "Detective"}',
        "--metadata",
        '{"character_id": "detective_main"}',
        "--priority",
        "2",
        "--callback-url",
        "https://example.com/hook",
    )
    assert submission_body(args) == {
        "task_type": "generate_image",
        "project_id": "detective_series_001",
        "task_data": {"character_description": "Detective"},
        "metadata": {"character_id": "detective_main"},
        "priority": 2,
        "callback_url": "https://example.com/hook",
    }


def test_body_from_file_with_overrides(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps(
            {
                "project_id": "p1",
                "task_type": "process_audio",
                "task_data": {"text": "Hello"},
                "priority": 5,
            }
        )
    )
    data = tmp_path / "data.json"
    data.write_text('{"text": "Goodbye"}')
    args = _submit_args("--file", str(body), "--priority", "1", "--data-file", str(data))
    assert submission_body(args) == {
        "project_id": "p1",
        "task_type": "process_audio",
        "task_data": {"text": "Goodbye"},
        "priority": 1,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--type", "generate_image", "--project", "p"], "missing --data"),
        (["--type", "generate_image", "--project", "p", "--data", "{nope"], "--data: not valid"),
        (["--file", "/nonexistent/body.json"], "--file: cannot read"),
        (["--project", "p", "--data", "{}", "--data-file", "x.json"], "mutually exclusive"),
    ],
)
def test_body_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        submission_body(_submit_args(*argv))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--type", "no_such_type"]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["list"]) == EXIT_USAGE  # --project is required
    assert cli.main(["status", "some-id", "--api-key", ""]) == EXIT_USAGE


def test_bad_json_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["submit", "--api-key", "k", "--type", "generate_image", "--project", "p", "--data", "["]
    )
    assert code == EXIT_USAGE
    assert "--data: not valid JSON" in capsys.readouterr().err


def test_unreachable_api_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["status", "x", "--api-url", url, "--api-key", "k", "--json"])
    assert code == EXIT_API
    captured = capsys.readouterr()
    assert "cannot reach the API" in captured.err
    # --json keeps stdout machine-readable even for errors.
    assert json.loads(captured.out)["error"]["status"] is None


def test_api_url_and_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEGEN_API_URL", "http://api.example:9000")
    monkeypatch.setenv("MOVIEGEN_API_KEY", "env-key")
    parser = argparse.ArgumentParser()
    cli.add_client_commands(parser.add_subparsers(dest="cmd"), "http://default:1")
    args = parser.parse_args(["workers"])
    assert (args.api_url, args.api_key) == ("http://api.example:9000", "env-key")


def test_parse_sse() -> None:
    stream = [
        "retry: 3000",
        "event: status",
        'data: {"progress": 0.5}',
        "id: 4",
        "",
        ": ping",
        "",
        "event: end",
        "data: {",
        'data: "status": "completed"}',
        "id: 5",
        "",
        "data: incomplete event at the end is dropped",
    ]
    events = list(parse_sse(stream))
    assert [(e.event, e.id) for e in events] == [("status", "4"), ("end", "5")]
    assert events[0].json() == {"progress": 0.5}
    assert events[1].json() == {"status": "completed"}


@pytest.fixture
def keys_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway migrated database on the machine's PostgreSQL, as DATABASE_URL."""
    with throwaway_database("mg_test_cli") as url:
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            yield url
        finally:
            get_settings.cache_clear()


def test_keys_rotate(keys_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--project", "detective_series_001"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert cli.main(["keys", "rotate", str(created["key_id"]), "--grace-hours", "2"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["rotated_key_id"] == created["key_id"]
    assert rotated["api_key"] != created["api_key"]
    until = datetime.fromisoformat(rotated["old_key_expires_at"])
    assert timedelta(hours=1.9) < until - datetime.now(UTC) <= timedelta(hours=2)
    with psycopg.connect(keys_database, row_factory=psycopg.rows.dict_row) as conn:
        for raw in (created["api_key"], rotated["api_key"]):
            caller = keys.authenticate(conn, raw)
            assert caller is not None and caller.project_id == "detective_series_001"
    # Unknown key: exit 1 with a message; negative grace: usage error.
    assert cli.main(["keys", "rotate", "999999"]) == 1
    assert "999999" in capsys.readouterr().err
    assert cli.main(["keys", "rotate", str(created["key_id"]), "--grace-hours", "-1"]) == 2


def test_dagster_yaml_for_external_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        assert cli.main(["dagster-yaml"]) == 2
        assert "DATABASE_URL and REDIS_URL" in capsys.readouterr().err

        monkeypatch.setenv("DATABASE_URL", "postgresql://mg@db.internal:5432/moviegen")
        monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6379/0")
        monkeypatch.setenv("MOVIEGEN_WORKERS", "gpu_heavy=4,gpu_light=8")
        get_settings.cache_clear()
        target = tmp_path / "dagster.yaml"
        assert cli.main(["dagster-yaml", "-o", str(target)]) == 0
        text = target.read_text()
    finally:
        get_settings.cache_clear()
    assert 'postgres_url: "postgresql+psycopg2://mg@db.internal:5432/moviegen"' in text
    assert 'broker: "redis://redis.internal:6379/0"' in text
    assert "value: gpu_heavy\n        limit: 4" in text
    assert "value: gpu_light\n        limit: 8" in text
