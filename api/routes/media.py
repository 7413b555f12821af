"""Media route: files of the local media store, or a redirect to a freshly signed R2 URL.

With R2 and no public bucket URL, `/media/{key}` is the stable link that never expires (what
PayloadCMS stores in url mode); each request is redirected to a new presigned URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.deps import SettingsDep
from api.errors import ERROR_RESPONSES, ApiError
from moviegen_dagster.ids import CONTENT_TYPES
from moviegen_dagster.ids import MEDIA_KEY_PATTERN as _KEY_RE
from moviegen_dagster.media_urls import media_url

router = APIRouter(tags=["media"], responses=ERROR_RESPONSES)

MEDIA_NOT_FOUND = "media not found"


def resolve_media(root: Path, key: str, raw_path: bytes) -> Path | None:
    """The file a key names inside root, or None for anything that is not a plain stored key."""
    # Stored keys never need percent-encoding, so any escape (%2e, %2f, %00) is an attempt.
    if b"%" in raw_path or not _KEY_RE.fullmatch(key):
        return None
    # resolve() follows symlinks: a link (or a link in the path) leading out of the key's
    # project directory (another project, or out of root) fails here.
    root = root.resolve()
    project_dir = root / key.split("/", 1)[0]
    path = (root / key).resolve()
    if project_dir not in path.parents or not path.is_file():
        return None
    return path


@router.get("/media/{key:path}", response_class=FileResponse)
def get_media(key: str, request: Request, settings: SettingsDep) -> Response:
    """A produced image, video or audio file (no key: media keys are unguessable)."""
    if settings.r2_configured:
        if b"%" in (request.scope.get("raw_path") or b"") or not _KEY_RE.fullmatch(key):
            raise ApiError(404, MEDIA_NOT_FOUND)
        return RedirectResponse(media_url(settings, key), status_code=307)
    root = settings.media_root
    path = resolve_media(root, key, request.scope.get("raw_path") or b"")
    if path is None:
        raise ApiError(404, MEDIA_NOT_FOUND)
    match = _KEY_RE.fullmatch(key)
    assert match is not None
    return FileResponse(
        path,
        media_type=CONTENT_TYPES[match.group(1)],
        headers={"X-Content-Type-Options": "nosniff"},
    )


# HEAD too (players probe size and type first), kept out of the schema: one operation documents it.
router.add_api_route("/media/{key:path}", get_media, methods=["HEAD"], include_in_schema=False)
