"""Lineage and provenance of takes, and runs launched from the Dagster UI, on the real stack.

The UI's actions are sent to the stack's dagster-webserver as the UI sends them: the same
GraphQL mutations (`launchRun` on the implicit asset job for "Materialize" on a partition,
`launchRunReexecution` for "Re-execute").
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import psycopg
from dagster import AssetKey, AssetRecordsFilter, RunsFilter

from moviegen_dagster.dispatch import LAUNCH_RUN, REEXECUTE_RUN
from tests.conftest import PROJECT_A, AssetServer, RunningStack, jpeg, poll


def graphql(stack: RunningStack, query: str, variables: dict[str, Any], field: str) -> Any:
    """One GraphQL mutation against the stack's webserver, as the UI sends it."""
    resp = httpx.post(
        f"{stack.dagster_url}/graphql", json={"query": query, "variables": variables}, timeout=30
    )
    resp.raise_for_status()
    body = resp.json()
    assert not body.get("errors"), body
    return body["data"][field]


def materialize_partition(stack: RunningStack, asset: str, partition: str) -> str:
    """The UI's "Materialize" on one partition of one asset: a run of the implicit asset job."""
    params = {
        "selector": {
            "repositoryLocationName": "moviegen",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": [asset]}],
            "assetCheckSelection": [],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    result = graphql(stack, LAUNCH_RUN, {"params": params}, "launchRun")
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


def reexecute(stack: RunningStack, run_id: str, strategy: str = "FROM_FAILURE") -> str:
    """The UI's "Re-execute" (from failure, or all steps) of a run."""
    result = graphql(
        stack, REEXECUTE_RUN, {"parent": run_id, "strategy": strategy}, "launchRunReexecution"
    )
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


def _runs(stack: RunningStack, task_id: str) -> list[Any]:
    return list(stack.instance().get_runs(RunsFilter(tags={"moviegen/task_id": task_id})))


def test_take_records_inputs_hashes_provenance_and_preview(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    subject = f"lin_{uuid.uuid4().hex[:8]}"
    style_bytes = jpeg((10, 20, 90), (96, 64))
    ref_bytes = jpeg((220, 200, 160), (96, 64))
    style = asset_server.add(f"/{subject}/style.jpg", "image/jpeg", style_bytes)
    ref = asset_server.add(f"/{subject}/ref.jpg", "image/jpeg", ref_bytes)
    with running_stack.client() as client:
        task_id = running_stack.submit_image(
            client,
            task_data={"style_guide": style, "reference_images": [ref], "seed": 7},
            metadata={"character_id": subject},
        )["task_id"]
        done = running_stack.wait_terminal(client, task_id)
    assert done["status"] == "completed", done
    assert done["parent_task_id"] is None
    partition = f"{PROJECT_A}/{subject}"
    instance = running_stack.instance()
    mat = (
        instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("character_image"), asset_partitions=[partition]),
            limit=1,
        )
        .records[0]
        .asset_materialization
    )
    assert mat is not None
    md = {k: v.value for k, v in mat.metadata.items()}
    expected_inputs = [
        {
            "name": "style_guide",
            "url": style,
            "sha256": hashlib.sha256(style_bytes).hexdigest(),
            "bytes": len(style_bytes),
        },
        {
            "name": "reference_images[0]",
            "url": ref,
            "sha256": hashlib.sha256(ref_bytes).hexdigest(),
            "bytes": len(ref_bytes),
        },
    ]
    assert md["inputs"] == expected_inputs
    assert md["task_id"] == task_id and md["seed"] == 7 and md["prompt"]
    assert md["model_id"] == md["model"] and "model_revision" in md
    assert md["media_url"] == done["result"]["media_url"]
    assert md["preview"].startswith("![take](") and f"{task_id}.jpg" in md["preview"]
    assert hashlib.sha256(style_bytes).hexdigest()[:16] in md["inputs_table"]
    for timing in ("generation_seconds", "model_load_seconds", "upload_seconds", "total_seconds"):
        assert isinstance(md[timing], float)
    # The take's data version is the one recorded, and it refers to its inputs' record.
    assert mat.tags["dagster/data_version"] == md["data_version"]
    inputs_record = (
        instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=AssetKey("style_references"), asset_partitions=[partition]
            ),
            limit=1,
        )
        .records[0]
        .asset_materialization
    )
    assert inputs_record is not None
    assert inputs_record.metadata["inputs"].value == expected_inputs
    assert inputs_record.metadata["task_id"].value == task_id
    input_version = inputs_record.tags["dagster/data_version"]
    # Dagster's version of a partitioned input: sha256 over its partitions' versions.
    assert (
        mat.tags["dagster/input_data_version/style_references"]
        == hashlib.sha256(input_version.encode()).hexdigest()
    )
    with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT provenance FROM moviegen.tasks WHERE task_id = %s", (uuid.UUID(task_id),)
        ).fetchone()
    assert row is not None and row[0]["inputs"] == expected_inputs
    assert row[0]["data_version"] == md["data_version"]


def test_ui_reexecution_of_a_failed_task_continues_it_and_completed_ones_never_change(
    running_stack: RunningStack,
) -> None:
    with running_stack.client() as client:
        task_id = running_stack.submit_image(
            client,
            task_data={"character_description": "FAULT_ONCE detective"},
            metadata={"character_id": f"rx_{uuid.uuid4().hex[:8]}"},
        )["task_id"]
        failed = running_stack.wait_terminal(client, task_id)
        assert failed["status"] == "failed" and failed["attempt"] == 1
        first_run = _runs(running_stack, task_id)[0]

        # Runs -> the failed run -> "Re-execute" -> "From failure", in the Dagster UI.
        rerun_id = reexecute(running_stack, first_run.run_id)
        reopened = client.get(f"/api/v1/tasks/{task_id}/status").json()
        assert reopened["status"] in ("queued", "processing"), reopened
        assert reopened["attempt"] == 2 and reopened["error"] is None
        done = running_stack.wait_terminal(client, task_id)
        assert done["status"] == "completed", done
        assert done["task_id"] == task_id and done["attempt"] == 2
        rerun = running_stack.instance().get_run_by_id(rerun_id)
        assert rerun is not None and rerun.tags["dagster-celery/queue"] == "gpu_light"

        # Re-executing the completed task's run again changes nothing about that task.
        refused_id = reexecute(running_stack, rerun_id, strategy="ALL_STEPS")
        poll(
            lambda: (
                (r := running_stack.instance().get_run_by_id(refused_id))
                and r.status.value == "FAILURE"
            ),
            timeout=120,
        )
        after = client.get(f"/api/v1/tasks/{task_id}/status").json()
        assert after["status"] == "completed" and after["attempt"] == 2
        assert after["result"]["media_url"] == done["result"]["media_url"]
        with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT run_id FROM moviegen.tasks WHERE task_id = %s", (uuid.UUID(task_id),)
            ).fetchone()
        assert row is not None and row[0] == rerun_id


def test_ui_materialize_of_a_partition_creates_a_child_task(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    subject = f"mat_{uuid.uuid4().hex[:8]}"
    callback = asset_server.url + f"/hooks/{subject}"
    with running_stack.client() as client:
        parent = running_stack.submit_image(
            client,
            metadata={"character_id": subject},
            priority=2,
            callback_url=callback,
        )["task_id"]
        first = running_stack.wait_terminal(client, parent)
        assert first["status"] == "completed", first
        partition = f"{PROJECT_A}/{subject}"

        # Assets -> character_image -> partition -> "Materialize", in the Dagster UI.
        run_id = materialize_partition(running_stack, "character_image", partition)
        run = running_stack.instance().get_run_by_id(run_id)
        assert run is not None
        # Bound to a new task before it queued: same queue, limit and urgency as the parent.
        child_id = run.tags["moviegen/task_id"]
        assert child_id != parent and run.tags["moviegen/parent_task_id"] == parent
        assert run.tags["moviegen/worker_type"] == "gpu_light"
        assert run.tags["dagster-celery/queue"] == "gpu_light"
        assert run.tags["dagster/priority"] == "8"  # API priority 2
        child = running_stack.wait_terminal(client, child_id)
        assert child["status"] == "completed", child
        assert child["parent_task_id"] == parent and child["attempt"] == 1
        assert child["result"]["media_url"] != first["result"]["media_url"]
        assert f"{child_id}.jpg" in child["result"]["media_url"]
        listing = client.get(f"/api/v1/projects/{PROJECT_A}/tasks", params={"limit": 100}).json()
        listed = {t["task_id"]: t["parent_task_id"] for t in listing["tasks"]}
        assert listed[child_id] == parent and listed[parent] is None
        # The parent is untouched; the child has its own callback.
        again = client.get(f"/api/v1/tasks/{parent}/status").json()
        same = ("status", "attempt", "completed_at", "parent_task_id", "progress")
        assert {k: again[k] for k in same} == {k: first[k] for k in same}

    def delivered() -> list[str]:
        hooks = asset_server.received.get(f"/hooks/{subject}", [])
        return [json.loads(body)["task_id"] for _, body in hooks]

    poll(lambda: set(delivered()) == {parent, child_id} and delivered(), timeout=60)
