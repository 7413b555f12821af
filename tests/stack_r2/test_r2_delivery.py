"""A stack configured for R2, against a real S3 server (moto) on 127.0.0.1: the take lands
under the project's prefix and the API hands out freshly presigned URLs."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from tests.conftest import (
    KEY_A,
    PROJECT_A,
    AssetServer,
    RunningStack,
    jpeg,
    poll,
    scene_task,
    start_stack,
)
from tests.payload_support import PayloadInstance, running_payload
from tests.s3_support import moto_s3, s3_client

BUCKET = "moviegen-media"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayloadInstance]:
    with running_payload(tmp_path_factory.mktemp("payload")) as instance:
        yield instance


@pytest.fixture(scope="module")
def r2_stack(
    s3_endpoint: str, payload: PayloadInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    with start_stack(
        tmp_path_factory.mktemp("r2stack"),
        MOVIEGEN_API_KEYS=f"{KEY_A}:{PROJECT_A}",
        MOVIEGEN_WORKERS="gpu_heavy=1,gpu_light=1",
        MOVIEGEN_URL_ALLOWLIST="127.0.0.1",
        R2_ENDPOINT_URL=s3_endpoint,
        R2_BUCKET=BUCKET,
        R2_ACCESS_KEY_ID="test",
        R2_SECRET_ACCESS_KEY="test",
        R2_REGION="us-east-1",
        PAYLOAD_URL=payload.url,
        PAYLOAD_API_KEY=payload.api_key,
    ) as stack:
        yield stack


def test_take_is_stored_in_r2_under_the_project_and_served_by_presigned_url(
    r2_stack: RunningStack, s3_endpoint: str
) -> None:
    with r2_stack.client() as client:
        task_id = r2_stack.submit_image(client)["task_id"]
        doc = r2_stack.wait_terminal(client, task_id, timeout=180)
        assert doc["status"] == "completed", doc
        again = client.get(f"/api/v1/tasks/{task_id}/status").json()
    key = f"{PROJECT_A}/images/{task_id}.jpg"
    s3 = s3_client(s3_endpoint)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/jpeg"
    assert head["ContentLength"] == doc["result"]["metadata"]["file_size"]
    url = doc["result"]["media_url"]
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/{key}?") and "X-Amz-Signature=" in url
    assert (
        again["result"]["media_key"] == key and "X-Amz-Signature=" in again["result"]["media_url"]
    )
    media = httpx.get(url, timeout=10)
    assert media.status_code == 200
    assert Image.open(io.BytesIO(media.content)).size == (256, 256)


def test_quickstart_scenario_1_reaches_r2_payload_and_the_callback(
    r2_stack: RunningStack, payload: PayloadInstance, asset_server: AssetServer
) -> None:
    """Video task → object under the project prefix in R2, Payload record, signed callback."""
    frames = [
        asset_server.add("/s1/frame1.jpg", "image/jpeg", jpeg((20, 20, 40))),
        asset_server.add("/s1/frame2.jpg", "image/jpeg", jpeg((60, 40, 20))),
    ]
    body = {
        **scene_task(frames, resolution="320x180"),
        "callback_url": asset_server.url + "/s1/hook",
    }
    with r2_stack.client() as client:
        resp = client.post("/api/v1/tasks/submit", json=body)
        assert resp.status_code == 202, resp.text
        task_id = resp.json()["task_id"]
        doc = r2_stack.wait_terminal(client, task_id, timeout=300)
    assert doc["status"] == "completed", doc
    result = doc["result"]
    key = f"{PROJECT_A}/videos/{task_id}.mp4"
    assert result["media_key"] == key
    media = httpx.get(result["media_url"], timeout=30)
    assert media.status_code == 200 and media.content[4:8] == b"ftyp"

    record = httpx.get(
        f"{payload.url}/api/media/{result['payload_media_id']}",
        headers={"Authorization": f"users API-Key {payload.api_key}"},
        timeout=10,
    ).json()
    assert record["task_id"] == task_id and record["project_id"] == PROJECT_A
    assert record["task_type"] == "generate_video"
    assert record["resolution"] == "320x180" and record["fps"] == 24
    assert record["file_size"] == len(media.content)
    assert str(record["seed"]) == str(result["metadata"]["seed"])
    # Payload keeps a link that never expires: the API's /media route, redirecting to R2.
    assert record["url"] == f"{r2_stack.api_url}/media/{key}"
    via_api = httpx.get(record["url"], follow_redirects=True, timeout=30)
    assert via_api.status_code == 200 and via_api.content == media.content

    hooks = poll(lambda: asset_server.received.get("/s1/hook"), timeout=60)
    headers, raw = hooks[0]
    event = Webhook(r2_stack.env["WEBHOOK_SIGNING_SECRET"]).verify(
        raw, {k.lower(): v for k, v in headers.items()}
    )
    assert event["event"] == "task.completed" and event["task_id"] == task_id
    assert event["result"]["payload_media_id"] == result["payload_media_id"]
