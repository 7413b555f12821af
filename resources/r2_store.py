"""Cloudflare R2 (any S3-compatible endpoint) media store, built on dagster-aws's S3Resource."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import dagster as dg
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from moviegen_dagster.ids import CONTENT_TYPES
from moviegen_dagster.r2_urls import DEFAULT_PRESIGN_SECONDS, check_media_key, presign_get
from resources.media_store import MediaStore

__all__ = ["MediaUploadError", "R2MediaStore"]

MIB = 1024 * 1024
# S3 (and R2) refuse multipart parts under 5 MiB, except the last one.
MIN_PART_BYTES = 5 * MIB

# Error codes worth another try even though the server answered (S3 and R2 spellings).
_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "InternalError"}
)


class MediaUploadError(RuntimeError):
    """An object could not be stored; the message names the key, the bucket and the cause."""


def _is_transient(exc: BaseException) -> bool:
    """Whether another attempt could succeed (network trouble, 5xx, throttling)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES
    # Connection refused/reset, timeouts, truncated responses; S3UploadFailedError carries no
    # structured cause, so it is treated as transient (a permanent one fails again anyway).
    return isinstance(exc, BotoConnectionError | HTTPClientError | S3UploadFailedError)


class R2MediaStore(MediaStore):
    """Objects in an R2 bucket; URLs are public (R2_PUBLIC_BASE_URL) or presigned GETs."""

    s3: S3Resource = Field(description="S3 client settings: R2 endpoint URL, region, credentials.")
    bucket: str = Field(description="Bucket holding every project's media.")
    public_base_url: str | None = Field(
        default=None,
        description="Public origin of the bucket (custom domain or r2.dev); unset: presigned URLs.",
    )
    presign_seconds: int = Field(
        default=DEFAULT_PRESIGN_SECONDS,
        description="Lifetime of a presigned GET URL (1..604800 s); the API re-signs on each read.",
    )
    multipart_threshold_bytes: int = Field(
        default=8 * MIB, description="Bodies at least this large go up as multipart uploads."
    )
    upload_attempts: int = Field(
        default=3, description="Whole-upload attempts on transient failures before giving up."
    )
    retry_backoff_seconds: float = Field(
        default=0.5, description="Pause before the 2nd attempt; doubles for each later one."
    )

    # One client per process: building one costs ~100 ms, and a client (with its connection
    # pool) must not cross a fork into a prefork worker child, hence the pid next to it.
    _client: tuple[int, Any] | None = PrivateAttr(default=None)

    def get_client(self) -> Any:
        """This process's boto3 S3 client, made by the nested S3Resource (retries included)."""
        if self._client is None or self._client[0] != os.getpid():
            self._client = (os.getpid(), self.s3.get_client())
        return self._client[1]

    def _transfer_config(self) -> TransferConfig:
        """Multipart above the threshold, in parts no smaller than S3 allows."""
        return TransferConfig(
            multipart_threshold=self.multipart_threshold_bytes,
            multipart_chunksize=max(self.multipart_threshold_bytes, MIN_PART_BYTES),
            max_concurrency=4,
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload (overwriting any earlier take), retrying transient failures with backoff."""
        check_media_key(key)
        expected = CONTENT_TYPES[key.rsplit(".", 1)[1]]
        if content_type != expected:
            # Browsers and players trust the stored Content-Type; a mismatch is a caller bug.
            raise ValueError(f"content type {content_type!r} does not fit {key!r} ({expected})")
        client = self.get_client()
        attempts = max(1, self.upload_attempts)
        log = dg.get_dagster_logger("moviegen.r2")
        for attempt in range(1, attempts + 1):
            try:
                # A fresh reader per attempt: a failed try may have consumed part of the body.
                client.upload_fileobj(
                    io.BytesIO(data),
                    self.bucket,
                    key,
                    ExtraArgs={"ContentType": content_type},
                    Config=self._transfer_config(),
                )
                return
            except Exception as exc:
                if attempt == attempts or not _is_transient(exc):
                    raise MediaUploadError(
                        f"upload of {key} to bucket {self.bucket} failed after {attempt} "
                        f"attempt{'s' if attempt > 1 else ''}: {type(exc).__name__}: {exc}"
                    ) from exc
                delay = self.retry_backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    f"upload of {key} (attempt {attempt}/{attempts}) failed: {exc}; "
                    f"retrying in {delay:.2f}s"
                )
                time.sleep(delay)

    def url(self, key: str) -> str:
        """Public URL when a public base URL is set, else a GET URL presigned right now."""
        check_media_key(key)
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{key}"
        return presign_get(
            self.s3.endpoint_url,
            self.s3.region_name,
            self.s3.aws_access_key_id,
            self.s3.aws_secret_access_key,
            self.bucket,
            key,
            self.presign_seconds,
            session_token=self.s3.aws_session_token,
        )

    def exists(self, key: str) -> bool:
        """Whether the object is in the bucket (HEAD)."""
        check_media_key(key)
        try:
            self.get_client().head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
