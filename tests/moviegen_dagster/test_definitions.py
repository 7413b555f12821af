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
        "sensors": ["deliver_webhooks", "prune_retention", "reconcile_tasks", "sync_task_status"],
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
    assert "class: MovieGenPostgresStorage" in text
    assert "connect_patience_seconds: 60.0" in text


def test_asset_graph_shows_each_takes_inputs_upstream() -> None:
    from dagster import AssetKey

    from moviegen_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    upstream = {
        "scene_video": "storyboard_frames",
        "character_image": "style_references",
        "dialogue_audio": "voice_profiles",
    }
    for media, source in upstream.items():
        node = graph.get(AssetKey(media))
        assert node.parent_keys == {AssetKey(source)}
        src = graph.get(AssetKey(source))
        assert not src.is_materializable  # inputs come from outside: observed, never built
        assert src.group_name == node.group_name
        assert src.partitions_def == node.partitions_def
        assert src.description and "sha256" in src.description
        assert node.code_version == "1"


def test_runs_launched_outside_the_api_route_like_tasks() -> None:
    from dagster import AssetKey
    from dagster._core.storage.dagster_run import DagsterRun

    from moviegen_dagster.coordinator import needs_binding, routing_tags, run_task_type
    from moviegen_dagster.definitions import defs
    from moviegen_dagster.settings import Settings

    # The UI's "Materialize" uses the implicit asset job: it must run inside the worker too.
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    assert defs.resolve_job_def("generate_video").tags == routing_tags("generate_video")
    ui_run = DagsterRun(
        job_name="__ASSET_JOB", run_id="r1", asset_selection=frozenset({AssetKey("dialogue_audio")})
    )
    assert run_task_type(ui_run) == "process_audio" and needs_binding(ui_run.tags)
    both = DagsterRun(
        job_name="__ASSET_JOB",
        run_id="r2",
        asset_selection=frozenset({AssetKey("scene_video"), AssetKey("character_image")}),
    )
    assert run_task_type(both) is None  # one run, one task: several media assets are refused
    api_run = DagsterRun(
        job_name="generate_image",
        run_id="r3",
        tags={"moviegen/task_id": "t", **routing_tags("generate_image")},
    )
    assert run_task_type(api_run) == "generate_image" and not needs_binding(api_run.tags)
    text = dagster_yaml(Settings(), "postgresql://u@h/db", "redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    assert "module: moviegen_dagster.coordinator\n  class: MovieGenRunCoordinator" in text
