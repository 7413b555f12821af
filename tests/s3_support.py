"""A real S3 HTTP server (moto) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

# Nothing may leave 127.0.0.1: no proxy, profile or endpoint from the environment.
_OUTSIDE = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "AWS_PROFILE", "AWS_ENDPOINT_URL")


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client on the test server (test credentials)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@contextmanager
def moto_s3(*buckets: str) -> Iterator[str]:
    """Start moto on a free loopback port with these buckets; yields its endpoint URL."""
    saved = {
        k: os.environ.pop(k) for k in (*_OUTSIDE, *(v.lower() for v in _OUTSIDE)) if k in os.environ
    }
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        for bucket in buckets:
            s3_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        os.environ.update(saved)
