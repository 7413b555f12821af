"""Presigned GET URLs for the R2 (S3-compatible) media store (boto3 only, no dagster).

The API stores a task's media *key* and calls `presign_get` on every status read, so a
client always receives a URL valid for the full expiry, never one that went stale in the
database. Signing is local (HMAC over the request): it makes no network call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from moviegen_dagster.ids import MEDIA_KEY_PATTERN

# Default lifetime of a presigned media URL; SigV4 refuses anything longer than 7 days.
DEFAULT_PRESIGN_SECONDS = 3600
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def check_media_key(key: str) -> str:
    """Return `key` if it is a well-formed project-scoped media key, else raise ValueError."""
    # fullmatch on an ASCII-only pattern refuses "..", "%2e", leading "/", NUL, backslashes and
    # look-alike unicode, so a key can never address an object outside its project prefix.
    if not isinstance(key, str) or not MEDIA_KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid media key {key!r}")
    return key


@lru_cache(maxsize=8)
def _signing_client(
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
) -> Any:
    """A cached S3 client used only for signing (building one costs ~100 ms; signing ~0.1 ms)."""
    # SigV4 is what R2 accepts; path-style works on every S3-compatible endpoint without
    # wildcard DNS (R2, MinIO, moto) and keeps the URL's host equal to the endpoint's.
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        config=config,
    )


def presign_get(
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    bucket: str,
    key: str,
    expires: int = DEFAULT_PRESIGN_SECONDS,
    *,
    session_token: str | None = None,
) -> str:
    """A presigned GET URL for `bucket/key`, valid `expires` seconds from now."""
    check_media_key(key)
    if not 1 <= expires <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"presign expiry must be 1..{MAX_PRESIGN_SECONDS} s, got {expires}")
    client = _signing_client(endpoint_url, region, access_key, secret_key, session_token)
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
    )
    return url
