"""A stack configured for R2, against a real S3 server (moto) on 127.0.0.1: the take lands
under the project's prefix and the API hands out freshly presigned URLs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.conftest import KEY_A, PROJECT_A, RunningStack, start_stack

BUCKET = "moviegen-media"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def r2_stack(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with start_stack(
        tmp_path_factory.mktemp("r2stack"),
        MOVIEGEN_API_KEYS=f"{KEY_A}:{PROJECT_A}",
        MOVIEGEN_WORKERS="gpu_heavy=0,gpu_light=1",
        R2_ENDPOINT_URL=s3_endpoint,
        R2_BUCKET=BUCKET,
        R2_ACCESS_KEY_ID="test",
        R2_SECRET_ACCESS_KEY="test",
        R2_REGION="us-east-1",
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
    s3: Any = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
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
