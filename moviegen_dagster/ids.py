"""Id and media-key rules shared by the API, storage and partitions (no dagster or torch)."""

import re

# Project, scene, character and dialogue ids: safe in URLs, storage keys and partition keys.
ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ID_PATTERN = re.compile(ID_REGEX)

CONTENT_TYPES = {"jpg": "image/jpeg", "mp4": "video/mp4", "mp3": "audio/mpeg"}
MEDIA_KINDS = ("images", "videos", "audio")
# ASCII only and fullmatch'ed: no "..", "%2e", "\\", NUL, leading "/" or look-alike unicode, so a
# key can never name anything outside `{project_id}/`. The task id is a canonical UUID.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MEDIA_KEY_PATTERN = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}/(?:images|videos|audio)/" + _UUID + r"\.(jpg|mp4|mp3)",
    re.ASCII,
)


def media_key(project_id: str, kind: str, task_id: str, ext: str) -> str:
    """`{project_id}/{kind}/{task_id}.{ext}`, validated so no key can leave its project."""
    key = f"{project_id}/{kind}/{task_id}.{ext}"
    if not ID_PATTERN.fullmatch(project_id) or not MEDIA_KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid media key parts: {project_id!r}, {kind!r}, {task_id!r}, {ext!r}")
    return key
