"""MOVIEGEN_DAGSTER_READ_ONLY: the webserver the stack starts for viewers refuses mutations."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from moviegen_dagster.dispatch import LAUNCH_RUN, LOCATION, REPOSITORY
from moviegen_dagster.settings import Settings
from moviegen_dagster.stack import REPO_ROOT, free_port, webserver_command
from tests.conftest import INHERITED_STATE, poll

PERMISSIONS = "{ permissions { permission value } }"
JOBS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }
"""


@pytest.fixture(scope="module")
def read_only_webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Only a dagster-webserver, as the stack starts it read-only, on a throwaway DAGSTER_HOME."""
    home = tmp_path_factory.mktemp("readonly")
    settings = Settings.model_validate({"MOVIEGEN_DAGSTER_READ_ONLY": "1"})
    assert settings.dagster_read_only
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_STATE}
    # No dagster.yaml: the default SQLite storage under the throwaway home is enough here.
    env.update(DAGSTER_HOME=str(home), MOVIEGEN_HOME=str(home), HF_HUB_OFFLINE="1")
    log = open(Path(home) / "webserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        webserver_command("127.0.0.1", port, read_only=settings.dagster_read_only),
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (Path(home) / "webserver.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(up, timeout=120, interval=0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    resp = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert not body.get("errors"), body
    return dict(body["data"])


def test_read_only_webserver_serves_the_code_location_but_refuses_launch_run(
    read_only_webserver: str,
) -> None:
    # Reads work: the code location loaded and its task jobs are visible to viewers.
    repos = _graphql(read_only_webserver, JOBS)["repositoriesOrError"]["nodes"]
    jobs = {job["name"] for repo in repos for job in repo["jobs"]}
    assert {"generate_image", "generate_video", "process_audio"} <= jobs
    permissions = {
        p["permission"]: p["value"]
        for p in _graphql(read_only_webserver, PERMISSIONS)["permissions"]
    }
    assert permissions["launch_pipeline_execution"] is False
    assert permissions["terminate_pipeline_execution"] is False
    # The mutation the API's fast path uses is refused, not executed.
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": "generate_image",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "p/x"}]},
    }
    result = _graphql(read_only_webserver, LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "UnauthorizedError", result
    # Nor can a viewer write asset events through the REST endpoint beside GraphQL.
    report = httpx.post(
        f"{read_only_webserver}/report_asset_materialization/scene_video",
        params={"partition": "p/x"},
        timeout=30,
    )
    assert report.status_code == 401, report.text
