"""R2MediaStore against a real S3 HTTP server (moto's server mode) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import dagster as dg
import httpx
import pytest
from botocore.exceptions import EndpointConnectionError
from dagster_aws.s3 import S3Resource

from moviegen_dagster.ids import media_key
from moviegen_dagster.r2_urls import presign_get
from resources.media_store import MediaStore
from resources.r2_store import MediaUploadError, R2MediaStore
from tests.s3_support import moto_s3, s3_client

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
# R2's documented region; the signer puts it in the credential scope.
REGION = "auto"
PROJECT = "proj_r2"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One moto S3 server per module, on a free loopback port, stopped at module end."""
    with moto_s3() as url:
        yield url


@pytest.fixture(scope="module")
def bucket(endpoint: str) -> str:
    """A fresh bucket (moto refuses CreateBucket without a location outside us-east-1)."""
    name = f"media-{uuid.uuid4().hex[:12]}"
    raw_client(endpoint).create_bucket(Bucket=name)
    return name


def raw_client(endpoint: str) -> Any:
    """A boto3 client outside the store under test."""
    return s3_client(endpoint)


def make_store(endpoint: str, bucket: str, **overrides: Any) -> R2MediaStore:
    """The store as production builds it, with botocore's own retries off (tests count tries)."""
    # botocore's max_attempts counts *retries* (0: one try per call), despite dagster's wording.
    s3 = S3Resource(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        max_attempts=0,
    )
    return R2MediaStore(s3=s3, bucket=bucket, **{"retry_backoff_seconds": 0.01, **overrides})


def new_key(kind: str = "images", ext: str = "jpg") -> str:
    """A valid key for a fresh task of the test project."""
    return media_key(PROJECT, kind, str(uuid.uuid4()), ext)


def count_sends(client: Any) -> list[str]:
    """Record every HTTP request the client is about to send (operation names)."""
    sent: list[str] = []

    def hook(request: Any, event_name: str, **_: Any) -> None:
        sent.append(event_name.rsplit(".", 1)[-1])

    client.meta.events.register("before-send.s3", hook)
    return sent


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sigv4_query_signature(url: str, secret: str) -> str:
    """Recompute a presigned URL's SigV4 signature by hand (AWS's documented algorithm)."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    params.pop("X-Amz-Signature")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical_request = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    amz_date = params["X-Amz-Date"]
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    date, region, service, _ = scope.split("/")
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def test_put_stores_under_project_prefix_with_content_type(endpoint: str, bucket: str) -> None:
    store = make_store(endpoint, bucket)
    key = new_key("audio", "mp3")
    store.put(key, b"ID3-not-really-mp3", "audio/mpeg")
    client = raw_client(endpoint)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "audio/mpeg"
    assert head["ContentLength"] == len(b"ID3-not-really-mp3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PROJECT}/audio/")
    assert key in [obj["Key"] for obj in listed["Contents"]]
    assert store.exists(key)
    assert not store.exists(new_key())
    # A second take of the same task overwrites the first.
    store.put(key, b"take two", "audio/mpeg")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"take two"


def test_wrong_content_type_is_refused(endpoint: str, bucket: str) -> None:
    with pytest.raises(ValueError, match="content type"):
        make_store(endpoint, bucket).put(new_key("videos", "mp4"), b"x", "image/jpeg")


def test_small_body_is_one_put_large_body_goes_multipart(endpoint: str, bucket: str) -> None:
    store = make_store(endpoint, bucket)
    sent = count_sends(store.get_client())
    small = new_key()
    store.put(small, b"\xff\xd8" + b"j" * 1000, "image/jpeg")
    assert sent == ["PutObject"]

    sent.clear()
    big = new_key("videos", "mp4")
    body = bytes(range(256)) * (20_000_000 // 256)  # ~20 MB: 3 parts of 8 MiB at most
    store.put(big, body, "video/mp4")
    assert sent.count("CreateMultipartUpload") == 1
    assert sent.count("UploadPart") == 3
    assert sent.count("CompleteMultipartUpload") == 1
    client = raw_client(endpoint)
    head = client.head_object(Bucket=bucket, Key=big)
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: md5-of-md5s "-N"
    assert head["ContentType"] == "video/mp4"
    assert client.get_object(Bucket=bucket, Key=big)["Body"].read() == body


def test_public_base_url_form(endpoint: str, bucket: str) -> None:
    store = make_store(endpoint, bucket, public_base_url="https://media.example.com/")
    key = new_key()
    assert store.url(key) == f"https://media.example.com/{key}"


def test_presigned_url_fetches_object_and_is_signed_afresh(endpoint: str, bucket: str) -> None:
    store = make_store(endpoint, bucket, presign_seconds=900)
    key = new_key()
    body = b"\xff\xd8presigned-jpeg"
    store.put(key, body, "image/jpeg")

    first = store.url(key)
    parts = urlsplit(first)
    params = dict(parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == endpoint
    assert parts.path == f"/{bucket}/{key}"
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Expires"] == "900"
    assert params["X-Amz-Credential"].startswith(f"{ACCESS_KEY}/")
    assert f"/{REGION}/s3/aws4_request" in params["X-Amz-Credential"]
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 60
    # moto does not check signatures, so check it here: a real R2 recomputes exactly this.
    assert params["X-Amz-Signature"] == sigv4_query_signature(first, SECRET_KEY)
    assert params["X-Amz-Signature"] != sigv4_query_signature(first, "wrong-secret")

    response = httpx.get(first, trust_env=False)
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-type"] == "image/jpeg"
    # Without the signature the private bucket refuses the same object.
    assert httpx.get(f"{endpoint}/{bucket}/{key}", trust_env=False).status_code == 403

    time.sleep(1.1)  # SigV4 timestamps have one-second resolution
    second = store.url(key)
    assert second != first
    assert dict(parse_qsl(urlsplit(second).query))["X-Amz-Date"] > params["X-Amz-Date"]
    assert httpx.get(second, trust_env=False).content == body


def test_presign_get_is_the_same_signer_and_checks_expiry(endpoint: str, bucket: str) -> None:
    key = new_key()
    url = presign_get(endpoint, REGION, ACCESS_KEY, SECRET_KEY, bucket, key, 60)
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "60"
    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expiry"):
            presign_get(endpoint, REGION, ACCESS_KEY, SECRET_KEY, bucket, key, bad)


UUID = "0123abcd-0000-4000-8000-00000000beef"
HOSTILE_KEYS = [
    "../x",
    "p/../../etc",
    f"{PROJECT}/images/../../other/images/{UUID}.jpg",
    f"{PROJECT}/../other/images/{UUID}.jpg",
    "%2e%2e/",
    f"%2e%2e/images/{UUID}.jpg",
    f"{PROJECT}/images/%2e%2e%2f{UUID}.jpg",
    "/abs",
    f"/{PROJECT}/images/{UUID}.jpg",
    "p/images/x\x00.jpg",
    f"{PROJECT}/images/{UUID}.jpg\x00.jpg",
    f"{PROJECT}/images/{UUID}.jpg\n",
    f"{PROJECT}\\images\\{UUID}.jpg",
    f"\uff50roject/images/{UUID}.jpg",  # fullwidth "p"
    f"proj\u0435ct/images/{UUID}.jpg",  # Cyrillic "e"
    f"{PROJECT}/images/{UUID}.jpg/",
    f"{PROJECT}/images/{UUID}.exe",
    f"{PROJECT}/secrets/{UUID}.jpg",
    "",
]


@pytest.fixture(scope="module")
def dead_store() -> tuple[R2MediaStore, list[str]]:
    """A store whose endpoint refuses connections, and the requests its client tried."""
    store = make_store(f"http://127.0.0.1:{closed_port()}", "media", upload_attempts=1)
    return store, count_sends(store.get_client())


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=ascii)
def test_hostile_keys_are_refused_before_any_request(
    key: str, dead_store: tuple[R2MediaStore, list[str]]
) -> None:
    # Had any request been tried, put would fail with MediaUploadError (and the hook would
    # have seen it), not ValueError.
    store, sent = dead_store
    with pytest.raises(ValueError):
        store.put(key, b"x", "image/jpeg")
    with pytest.raises(ValueError):
        store.url(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        make_store("http://127.0.0.1:9", "media", public_base_url="https://cdn.test").url(key)
    with pytest.raises(ValueError):
        presign_get("http://127.0.0.1:9", REGION, ACCESS_KEY, SECRET_KEY, "media", key, 60)
    assert sent == []


def test_unreachable_endpoint_fails_clearly_after_configured_attempts() -> None:
    store = make_store(f"http://127.0.0.1:{closed_port()}", "media-bucket", upload_attempts=3)
    sent = count_sends(store.get_client())
    key = new_key()
    started = time.monotonic()
    with pytest.raises(MediaUploadError) as info:
        store.put(key, b"\xff\xd8", "image/jpeg")
    message = str(info.value)
    assert key in message
    assert "media-bucket" in message
    assert "after 3 attempts" in message
    assert sent == ["PutObject"] * 3
    assert isinstance(info.value.__cause__, EndpointConnectionError)
    assert time.monotonic() - started < 5  # backoff 0.01 s, 0.02 s: nothing long


def test_transient_failure_is_retried_then_succeeds(endpoint: str, bucket: str) -> None:
    store = make_store(endpoint, bucket, upload_attempts=3)
    client = store.get_client()
    tries: list[int] = []

    def flaky(request: Any, **_: Any) -> None:
        # The first PutObject "loses its connection"; later ones reach the server.
        tries.append(1)
        if len(tries) == 1:
            raise EndpointConnectionError(endpoint_url=endpoint)

    client.meta.events.register("before-send.s3.PutObject", flaky)
    key = new_key()
    store.put(key, b"\xff\xd8second try", "image/jpeg")
    assert len(tries) == 2
    assert (
        raw_client(endpoint)
        .get_object(Bucket=bucket, Key=key)["Body"]
        .read()
        .endswith(b"second try")
    )


def test_permanent_failure_is_not_retried(endpoint: str) -> None:
    store = make_store(endpoint, "no-such-bucket", upload_attempts=3)
    key = new_key()
    with pytest.raises(MediaUploadError, match=r"no-such-bucket failed after 1 attempt: NoSuch"):
        store.put(key, b"\xff\xd8", "image/jpeg")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dagster-internal deprecation
def test_works_as_a_dagster_resource_with_nested_s3(endpoint: str, bucket: str) -> None:
    key = new_key()

    @dg.asset
    def take(media_store: MediaStore) -> dg.MaterializeResult:
        media_store.put(key, b"\xff\xd8from-an-asset", "image/jpeg")
        return dg.MaterializeResult(
            metadata={"media_url": dg.MetadataValue.url(media_store.url(key))}
        )

    result = dg.materialize([take], resources={"media_store": make_store(endpoint, bucket)})
    assert result.success
    url = result.asset_materializations_for_node("take")[0].metadata["media_url"].value
    assert isinstance(url, str) and url.startswith(f"{endpoint}/{bucket}/{key}?")
    assert httpx.get(url, trust_env=False).content == b"\xff\xd8from-an-asset"
