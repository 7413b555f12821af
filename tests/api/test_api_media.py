"""GET /media/{key}: files of the local media store, never anything outside it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient

from api.routes.media import resolve_media

PROJECT = "proj_media"
IMAGE_ID = str(uuid.uuid4())
FILES = {
    f"{PROJECT}/images/{IMAGE_ID}.jpg": (b"\xff\xd8\xff\xe0jpeg", "image/jpeg"),
    f"{PROJECT}/videos/{uuid.uuid4()}.mp4": (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
    f"{PROJECT}/audio/{uuid.uuid4()}.mp3": (b"ID3\x04mp3", "audio/mpeg"),
}


@pytest.fixture(scope="module")
def stored(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The store's files, plus symlinks that lead in and out of the root."""
    for key, (data, _) in FILES.items():
        path = media_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "images").mkdir()
    secret_id = str(uuid.uuid4())
    (outside / "images" / f"{secret_id}.jpg").write_bytes(b"secret")
    (outside / "passwd").write_bytes(b"root:x:0:0")
    links = {}
    # A file symlink pointing outside the root.
    file_link = f"{PROJECT}/images/{uuid.uuid4()}.jpg"
    (media_root / file_link).symlink_to(outside / "passwd")
    links["file_out"] = file_link
    # A project directory that is a symlink to outside.
    (media_root / "proj_linked").symlink_to(outside)
    links["dir_out"] = f"proj_linked/images/{secret_id}.jpg"
    # A symlink that stays inside the root is fine.
    inside_link = f"{PROJECT}/images/{uuid.uuid4()}.jpg"
    (media_root / inside_link).symlink_to(media_root / f"{PROJECT}/images/{IMAGE_ID}.jpg")
    links["inside"] = inside_link
    # A directory named like a file.
    dir_key = f"{PROJECT}/images/{uuid.uuid4()}.jpg"
    (media_root / dir_key).mkdir()
    links["dir"] = dir_key
    return links


@pytest.mark.parametrize("key", list(FILES))
def test_serves_files_with_their_type(client: TestClient, stored: dict[str, str], key: str) -> None:
    data, content_type = FILES[key]
    resp = client.get(f"/media/{key}")
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["content-type"] == content_type
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_head_and_range(client: TestClient, stored: dict[str, str]) -> None:
    key = f"{PROJECT}/images/{IMAGE_ID}.jpg"
    head = client.head(f"/media/{key}")
    assert head.status_code == 200
    assert head.headers["content-type"] == "image/jpeg"
    part = client.get(f"/media/{key}", headers={"Range": "bytes=0-2"})
    assert part.status_code == 206
    assert part.content == b"\xff\xd8\xff"


def test_needs_no_key(client: TestClient, stored: dict[str, str]) -> None:
    resp = client.get(f"/media/{PROJECT}/images/{IMAGE_ID}.jpg", headers={"X-API-Key": "wrong"})
    assert resp.status_code == 200


def test_symlink_inside_root_is_served(client: TestClient, stored: dict[str, str]) -> None:
    assert client.get(f"/media/{stored['inside']}").status_code == 200


@pytest.mark.parametrize("which", ["file_out", "dir_out", "dir"])
def test_symlinks_out_and_directories_are_404(
    client: TestClient, stored: dict[str, str], which: str
) -> None:
    assert_error(client.get(f"/media/{stored[which]}"), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/%2E%2E/outside/passwd",
        f"/media/{PROJECT}/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/media/{PROJECT}/images/{IMAGE_ID}%2ejpg",
        f"/media/{PROJECT}%2fimages%2f{IMAGE_ID}.jpg",
        f"/media/{PROJECT}/images/{IMAGE_ID}.jpg%00.png",
        f"/media/{PROJECT}/images/{IMAGE_ID}.jpg%00",
        "/media//etc/passwd",
        "/media/%2fetc%2fpasswd",
        "/media/etc/passwd",
        f"/media/{PROJECT}/images/{IMAGE_ID}.png",
        f"/media/{PROJECT}/secrets/{IMAGE_ID}.jpg",
        f"/media/{PROJECT}/images/{uuid.uuid4()}.jpg",
        f"/media/{PROJECT}/images/",
        f"/media/{PROJECT}",
        "/media/",
        f"/media/{PROJECT}/images/{IMAGE_ID}.jpg/",
        f"/media/{PROJECT}/images/sub/{IMAGE_ID}.jpg",
        f"/media/{PROJECT}/images/{IMAGE_ID.upper()}.jpg",
        f"/media/{PROJECT}/images/{IMAGE_ID}.JPG",
    ],
)
def test_anything_but_a_stored_key_is_404(
    client: TestClient, stored: dict[str, str], path: str
) -> None:
    resp = client.get(path)
    assert resp.status_code == 404, path
    assert resp.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "key",
    [
        "../outside/passwd",
        f"{PROJECT}/images/../../../etc/passwd",
        f"/{PROJECT}/images/{IMAGE_ID}.jpg",
        f"{PROJECT}/images/{IMAGE_ID}.jpg\x00",
        f"{PROJECT}/./images/{IMAGE_ID}.jpg",
        f"{PROJECT}/images/{IMAGE_ID}.jpg\n",
        f"..\\{PROJECT}\\images\\{IMAGE_ID}.jpg",
    ],
)
def test_resolve_refuses_keys_a_client_library_would_normalise(
    media_root: Path, stored: dict[str, str], key: str
) -> None:
    # httpx removes dot segments before sending, so these are checked on the function itself.
    assert resolve_media(media_root, key, key.encode(errors="replace")) is None


def test_resolve_accepts_a_stored_key(media_root: Path, stored: dict[str, str]) -> None:
    key = f"{PROJECT}/images/{IMAGE_ID}.jpg"
    assert resolve_media(media_root, key, f"/media/{key}".encode()) == media_root / key
