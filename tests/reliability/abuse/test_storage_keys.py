"""Storage keys from hostile ids: refused at the API naming the field, and no key the code can
build, store or serve ever leaves `{project_id}/` (property-based, hypothesis)."""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.routes.media import resolve_media
from moviegen_dagster.ids import ID_PATTERN, MEDIA_KEY_PATTERN, media_key
from resources.media_store import LocalMediaStore
from tests.reliability.abuse.conftest import new_project

pytestmark = pytest.mark.reliability

HOSTILE_IDS = [
    "..",
    "../x",
    "../../etc/passwd",
    "x/../../y",
    "%2e%2e",
    "%2e%2e%2fx",
    "..%2fx",
    "x%00",
    "/etc/passwd",
    "/abs",
    "C:\\windows",
    "a\\..\\b",
    "a\x00b",
    "a/b",
    "a\uff0fb",  # fullwidth solidus
    "a\u2215b",  # division slash
    "a\u2024b",  # one-dot leader
    "\u2024\u2024",
    "\uff0e\uff0e",  # fullwidth full stops
    "a\u200bb",  # zero-width space
    "\uff41bc",  # fullwidth a
    "a b",
    "a\nb",
    "abc\n",
    "",
    "-leading-dash",
    "_leading",
    "a" * 65,
    ".hidden",
    "a.b",
]

# Atoms a path-traversal attempt is assembled from.
ATOMS = [
    "..",
    "../",
    "%2e%2e/",
    "%2e%2e%2f",
    "..%2f",
    "%2f",
    "/",
    "//",
    "\\",
    "%5c",
    "\uff0f",
    "\u2024",
    "\u2024\u2024/",
    "%00",
    "\x00",
    ".",
    "%2e",
    "images",
    "videos",
    "audio",
    "etc/passwd",
    "secret",
    ".jpg",
    ".mp4",
    ".mp3",
]

segment = st.one_of(st.sampled_from(ATOMS), st.text(max_size=12))
hostile_text = st.lists(segment, max_size=8).map("".join)


@given(
    project_id=st.one_of(st.sampled_from(HOSTILE_IDS), hostile_text),
    kind=st.one_of(st.sampled_from(["images", "videos", "audio", "..", "images/.."]), hostile_text),
    task_id=st.one_of(st.just(str(uuid.uuid4())), st.sampled_from(HOSTILE_IDS), hostile_text),
    ext=st.one_of(st.sampled_from(["jpg", "mp4", "mp3", "jpg/../x", "jpg\x00"]), hostile_text),
)
@settings(max_examples=1000, deadline=None, database=None)
def test_media_key_never_leaves_its_project(
    project_id: str, kind: str, task_id: str, ext: str
) -> None:
    """Either ValueError, or a normalised, ASCII, project-prefixed key."""
    try:
        key = media_key(project_id, kind, task_id, ext)
    except ValueError:
        return
    assert ID_PATTERN.fullmatch(project_id)
    assert key.startswith(project_id + "/")
    assert posixpath.normpath(key) == key and not key.startswith("/")
    assert ".." not in key.split("/") and "\\" not in key and "\x00" not in key
    assert key.isascii() and key.count("/") == 2


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root with a secret next to it and another project inside it."""
    base = tmp_path_factory.mktemp("keys")
    (base / "secret").write_bytes(b"SECRET")
    root = base / "media"
    (root / "other_project" / "images").mkdir(parents=True)
    return root


@given(key=st.one_of(hostile_text, st.sampled_from(HOSTILE_IDS)), project=st.sampled_from(["p1"]))
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_local_store_writes_only_under_the_keys_project(
    store_root: Path, key: str, project: str
) -> None:
    """put() with any string either refuses it or writes below root/{the key's project}."""
    store = LocalMediaStore(root=str(store_root), base_url="http://127.0.0.1")
    for candidate in (key, f"{project}/images/{key}", f"{project}/{key}"):
        before = _files(store_root.parent)
        try:
            store.put(candidate, b"x", "image/jpeg")
        except ValueError:
            assert _files(store_root.parent) == before, candidate
            continue
        assert MEDIA_KEY_PATTERN.fullmatch(candidate), candidate
        written = _files(store_root.parent) - before
        top = store_root / candidate.split("/", 1)[0]
        assert all(top in p.parents for p in written), (candidate, written)
    assert (store_root.parent / "secret").read_bytes() == b"SECRET"


def _files(base: Path) -> set[Path]:
    return {p.resolve() for p in base.rglob("*") if p.is_file()}


PROJECT = "keys_project"
OWN_ID = str(uuid.uuid4())
OWN_KEY = f"{PROJECT}/images/{OWN_ID}.jpg"
OTHER_ID = str(uuid.uuid4())


@pytest.fixture(scope="module")
def served(abuse_media_root: Path) -> Path:
    """Files of two projects in the app's media root, a secret beside it, and a link from one
    project into the other (which must not be served)."""
    own = abuse_media_root / OWN_KEY
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_bytes(b"\xff\xd8OWN")
    other = abuse_media_root / "other_proj" / "images" / f"{OTHER_ID}.jpg"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"\xff\xd8OTHER")
    (abuse_media_root.parent / "secret.jpg").write_bytes(b"SECRET")
    link = abuse_media_root / PROJECT / "images" / f"{uuid.uuid4()}.jpg"
    link.symlink_to(other)
    return abuse_media_root


@given(
    raw=st.lists(segment, min_size=1, max_size=8).map("".join),
    prefix=st.sampled_from(["", f"{PROJECT}/", f"{PROJECT}/images/", "other_proj/images/"]),
    quoted=st.booleans(),
)
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_media_route_serves_nothing_outside_a_key(
    abuse_client: TestClient, served: Path, raw: str, prefix: str, quoted: bool
) -> None:
    """/media/{anything} answers 404 in the common shape unless it names a stored key exactly."""
    path = prefix + (quote(raw, safe="/%") if quoted else raw)
    if any(c in path for c in "?#") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        path = quote(path, safe="/%")
    resp = abuse_client.get("/media/" + path)
    assert b"SECRET" not in resp.content and b"OTHER" not in resp.content, path
    if resp.status_code == 200:
        assert path == OWN_KEY and resp.content == b"\xff\xd8OWN", path
    else:
        assert resp.status_code in (400, 404), (path, resp.status_code)
        assert set(resp.json()) == {"error"}


def test_media_route_refuses_a_link_into_another_project(
    abuse_client: TestClient, served: Path
) -> None:
    """A file in the project's directory that links to another project's file is not served."""
    links = [p for p in (served / PROJECT / "images").iterdir() if p.is_symlink()]
    assert links
    for link in links:
        key = f"{PROJECT}/images/{link.name}"
        assert resolve_media(served, key, f"/media/{key}".encode()) is None
        assert abuse_client.get(f"/media/{key}").status_code == 404
    assert abuse_client.get(f"/media/{OWN_KEY}").content == b"\xff\xd8OWN"


def _submission(project_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "task_type": "generate_image",
        "task_data": {"character_description": "A detective"},
        **extra,
    }


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_api_refuses_hostile_ids_naming_the_field(
    abuse_client: TestClient, abuse_conn: Any, hostile: str
) -> None:
    """project_id and every metadata id: 400 naming the field; path ids: 400 or 404; nothing
    is stored."""
    project = new_project(abuse_conn)
    h = project.headers
    cases: list[tuple[dict[str, Any], str]] = [(_submission(hostile), "project_id")]
    for task_type, subject in (
        ("generate_image", "character_id"),
        ("generate_video", "scene_id"),
        ("process_audio", "dialogue_id"),
    ):
        body = _submission(project.project_id, metadata={subject: hostile})
        body["task_type"] = task_type
        cases.append((body, f"metadata.{subject}"))
    for body, field in cases:
        resp = abuse_client.post("/api/v1/tasks/submit", json=body, headers=h)
        assert resp.status_code == 400, (field, hostile, resp.text)
        assert resp.json()["error"]["field"] == field, (hostile, resp.text)

    quoted = quote(hostile, safe="")
    listing = abuse_client.get(f"/api/v1/projects/{quoted}/tasks", headers=h)
    assert listing.status_code in (400, 404), listing.text
    if listing.status_code == 400:
        assert listing.json()["error"]["field"] == "project_id", listing.text
    for method, route in (
        ("GET", "status"),
        ("DELETE", "cancel"),
        ("POST", "retry"),
        ("GET", "events"),
    ):
        resp = abuse_client.request(method, f"/api/v1/tasks/{quoted}/{route}", headers=h)
        # Malformed task ids answer exactly like unknown ones (no existence oracle).
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
    stored = abuse_conn.execute(
        "SELECT count(*) AS n FROM moviegen.tasks WHERE project_id = ANY(%s)",
        # PostgreSQL text cannot hold NUL, so such an id cannot have been stored either.
        [[project.project_id, hostile.replace("\x00", "")]],
    ).fetchone()
    assert stored["n"] == 0
