"""The code location loads fast, without torch, and every job and sensor resolves."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moviegen_dagster.settings import parse_workers
from moviegen_dagster.stack import dagster_yaml


def test_code_location_loads_without_heavy_imports() -> None:
    code = (
        "import sys, json\n"
        "from moviegen_dagster.definitions import defs\n"
        "names = ('generate_video', 'generate_image', 'process_audio')\n"
        "jobs = [defs.resolve_job_def(n) for n in names]\n"
        "print(json.dumps({'job': [j.name for j in jobs],\n"
        "  'partitions': sorted({j.partitions_def.name for j in jobs}),\n"
        "  'sensors': sorted(s.name for s in defs.sensors),\n"
        "  'heavy': [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]}))\n"
    )
    env = {"DATABASE_URL": "postgresql://unused@127.0.0.1/unused", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "job": ["generate_video", "generate_image", "process_audio"],
        "partitions": ["scenes"],
        "sensors": ["deliver_webhooks", "reconcile_tasks", "sync_task_status"],
        "heavy": [],
    }


def test_worker_slots_parse_and_bad_specs_are_refused() -> None:
    assert parse_workers("gpu_heavy=1,gpu_light=3") == {"gpu_heavy": 1, "gpu_light": 3}
    for bad in ("gpu=1", "gpu_light=x", "gpu_light"):
        with pytest.raises(ValueError, match="MOVIEGEN_WORKERS"):
            parse_workers(bad)


def test_dagster_yaml_limits_runs_per_worker_type_and_uses_psycopg2() -> None:
    from moviegen_dagster.settings import Settings

    settings = Settings(MOVIEGEN_WORKERS="gpu_heavy=1,gpu_light=2")  # type: ignore[call-arg]
    text = dagster_yaml(settings, "postgresql://u@h/db", "redis://127.0.0.1:1/0")
    assert 'postgres_url: "postgresql+psycopg2://u@h/db"' in text
    assert "value: gpu_heavy\n        limit: 1" in text
    assert "value: gpu_light\n        limit: 2" in text
    assert "class: MovieGenRunLauncher" in text
