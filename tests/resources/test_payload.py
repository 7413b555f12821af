"""PayloadCMS resource against a real PayloadCMS 3 (tests/payload_app) on 127.0.0.1, both modes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import httpx
import pytest

from resources.payload import PayloadCMS, PayloadError, generation_metadata
from tests.payload_support import PayloadInstance, free_port, running_payload

PROJECT = "proj_payload"
BIG_SEED = 2**63 - 1  # the largest seed MovieGen accepts: more than a JS number holds exactly


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayloadInstance]:
    """One real Payload (fresh SQLite file) for the whole module."""
    with running_payload(tmp_path_factory.mktemp("payload")) as instance:
        yield instance


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request any httpx client sends during the test, as 'METHOD path'."""
    calls: list[str] = []
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return original(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    return calls


def resource(payload: PayloadInstance, **overrides: Any) -> PayloadCMS:
    """The resource as production builds it, with a tiny backoff."""
    fields: dict[str, Any] = {
        "url": payload.url,
        "api_key": payload.api_key,
        "backoff_seconds": 0.01,
        **overrides,
    }
    return PayloadCMS(**fields)


def take_metadata(task_id: str, task_type: str = "generate_video") -> dict[str, Any]:
    """Document fields for one video take, as the delivery step builds them."""
    return generation_metadata(
        PROJECT,
        task_id,
        task_type,
        f"{PROJECT}/videos/{task_id}.mp4",
        {
            "duration": 7.04,
            "resolution": "1920x1080",
            "fps": 24,
            "file_size": 2048,
            "model": "Lightricks/LTX-2",
            "seed": BIG_SEED,
            "format": "mp4",
            "video_codec": "h264",
            "clips": 2,
        },
    )


def raw_get(payload: PayloadInstance, path: str) -> httpx.Response:
    """A GET with the seeded key, independent of the resource under test."""
    return httpx.get(payload.url + path, headers=payload.headers(), timeout=30, trust_env=False)


def assert_generation_fields(doc: dict[str, Any], task_id: str) -> None:
    """The document carries the take's metadata, the seed exactly."""
    assert doc["project_id"] == PROJECT
    assert doc["task_id"] == task_id
    assert doc["task_type"] == "generate_video"
    assert doc["media_key"] == f"{PROJECT}/videos/{task_id}.mp4"
    assert doc["duration"] == pytest.approx(7.04)
    assert doc["resolution"] == "1920x1080"
    assert doc["fps"] == 24
    assert doc["file_size"] == 2048
    assert doc["model"] == "Lightricks/LTX-2"
    assert doc["seed"] == str(BIG_SEED)
    assert doc["format"] == "mp4"
    assert doc["details"] == {"video_codec": "h264", "clips": 2}


def test_url_mode_stores_url_and_metadata(payload: PayloadInstance) -> None:
    task_id = f"task_{uuid.uuid4().hex[:12]}"
    media_url = f"https://media.example.com/{PROJECT}/videos/{task_id}.mp4"
    doc_id = resource(payload).register(
        media_url, None, f"{task_id}.mp4", "video/mp4", take_metadata(task_id)
    )
    assert isinstance(doc_id, str) and doc_id

    resp = raw_get(payload, f"/api/media/{doc_id}")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert str(doc["id"]) == doc_id
    assert doc["url"] == media_url
    assert doc["content_type"] == "video/mp4"
    assert_generation_fields(doc, task_id)
    assert resource(payload).get(doc_id) == doc


def test_upload_mode_stores_the_file(payload: PayloadInstance) -> None:
    task_id = f"task_{uuid.uuid4().hex[:12]}"
    data = uuid.uuid4().bytes * 4096  # 64 KiB that no other test sends
    media_url = f"https://media.example.com/{PROJECT}/videos/{task_id}.mp4"
    cms = resource(payload, mode="upload", media_collection="media_uploads")
    doc_id = cms.register(media_url, data, f"{task_id}.mp4", "video/mp4", take_metadata(task_id))
    assert isinstance(doc_id, str) and doc_id

    doc = cms.get(doc_id)
    assert_generation_fields(doc, task_id)
    assert doc["source_url"] == media_url
    assert doc["filename"] == f"{task_id}.mp4"
    assert doc["mimeType"] == "video/mp4"
    assert doc["filesize"] == len(data)
    # Payload keeps its own copy: served from its URL, and on its disk.
    served = raw_get(payload, doc["url"])
    assert served.status_code == 200
    assert served.content == data
    assert (payload.upload_dir / doc["filename"]).read_bytes() == data


def test_second_delivery_of_a_task_updates_its_document(payload: PayloadInstance) -> None:
    task_id = f"task_{uuid.uuid4().hex[:12]}"
    cms = resource(payload, mode="upload", media_collection="media_uploads")
    meta = take_metadata(task_id)
    first = cms.register("https://a.example/1.mp4", b"first take", "t.mp4", "video/mp4", meta)
    second = cms.register("https://a.example/2.mp4", b"second take", "t.mp4", "video/mp4", meta)
    assert second == first
    listing = raw_get(payload, f"/api/media_uploads?where[task_id][equals]={task_id}").json()
    assert listing["totalDocs"] == 1
    doc = cms.get(first)
    assert doc["source_url"] == "https://a.example/2.mp4"
    assert raw_get(payload, doc["url"]).content == b"second take"


def test_wrong_key_fails_at_once_with_403(payload: PayloadInstance, sent: list[str]) -> None:
    cms = resource(payload, api_key="not-the-key", attempts=4)
    with pytest.raises(PayloadError, match="403") as err:
        cms.register("https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata("t"))
    assert "'media'" in str(err.value)
    assert len(sent) == 1


def test_payload_down_fails_after_all_attempts(sent: list[str]) -> None:
    # Nothing listens on a port just found free: every try is refused.
    cms = PayloadCMS(
        url=f"http://127.0.0.1:{free_port()}", api_key="k", attempts=3, backoff_seconds=0.01
    )
    with pytest.raises(PayloadError, match=r"failed after 3 attempts: ConnectError") as err:
        cms.register("https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata("t"))
    assert "collection 'media'" in str(err.value)
    assert len(sent) == 3


class FlakyProxy:
    """A loopback HTTP proxy in front of Payload that answers 503 to the first `failures`."""

    def __init__(self, target: str, failures: int) -> None:
        self.failures = failures
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                resp = httpx.request(
                    self.command, target + self.path, headers=headers, content=body,
                    timeout=30, trust_env=False,
                )  # fmt: skip
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def test_unavailable_payload_is_retried(payload: PayloadInstance) -> None:
    proxy = FlakyProxy(payload.url, failures=2)
    try:
        task_id = f"task_{uuid.uuid4().hex[:12]}"
        cms = resource(payload, url=proxy.url, attempts=3)
        doc_id = cms.register(
            "https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata(task_id)
        )
        assert resource(payload).get(doc_id)["task_id"] == task_id
        # Two 503s, then the lookup and the create.
        assert proxy.seen == 4
    finally:
        proxy.close()


def test_unavailable_payload_fails_after_attempts(payload: PayloadInstance) -> None:
    proxy = FlakyProxy(payload.url, failures=100)
    try:
        cms = resource(payload, url=proxy.url, attempts=2)
        with pytest.raises(PayloadError, match=r"failed after 2 attempts: HTTP 503"):
            cms.register("https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata("t"))
        assert proxy.seen == 2
    finally:
        proxy.close()


def test_unconfigured_resource_is_disabled() -> None:
    cms = PayloadCMS()
    assert not cms.enabled
    with pytest.raises(PayloadError, match="not configured"):
        cms.register("https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata("t"))


def test_upload_mode_needs_the_bytes(payload: PayloadInstance) -> None:
    cms = resource(payload, mode="upload", media_collection="media_uploads")
    with pytest.raises(ValueError, match="bytes"):
        cms.register("https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata("t"))


def test_bound_as_a_dagster_resource_with_env_key(
    payload: PayloadInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYLOAD_API_KEY", payload.api_key)
    task_id = f"task_{uuid.uuid4().hex[:12]}"

    @dg.asset
    def delivered(payload_cms: PayloadCMS) -> dg.MaterializeResult:
        """Registers one take, as the delivery step does."""
        doc_id = payload_cms.register(
            "https://a.example/x.mp4", None, "x.mp4", "video/mp4", take_metadata(task_id)
        )
        return dg.MaterializeResult(metadata={"payload_media_id": doc_id})

    result = dg.materialize(
        [delivered],
        resources={
            "payload_cms": PayloadCMS(url=payload.url, api_key=dg.EnvVar("PAYLOAD_API_KEY"))
        },
    )
    assert result.success
    mat = result.asset_materializations_for_node("delivered")[0]
    doc_id = mat.metadata["payload_media_id"].value
    assert isinstance(doc_id, str)
    assert resource(payload).get(doc_id)["task_id"] == task_id


def test_generation_metadata_keeps_seed_exact_and_extras_in_details() -> None:
    doc = generation_metadata("p", "t", "generate_image", "p/images/t.jpeg", {
        "resolution": "512x512", "seed": BIG_SEED, "format": "jpeg", "steps": 4, "fps": None,
    })  # fmt: skip
    assert doc == {
        "project_id": "p",
        "task_id": "t",
        "task_type": "generate_image",
        "media_key": "p/images/t.jpeg",
        "resolution": "512x512",
        "seed": str(BIG_SEED),
        "format": "jpeg",
        "details": {"steps": 4},
    }
