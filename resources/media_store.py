"""Media stores: where produced files go, under project-scoped keys."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dagster as dg

from moviegen_dagster.ids import CONTENT_TYPES, MEDIA_KEY_PATTERN, media_key

__all__ = ["CONTENT_TYPES", "LocalMediaStore", "MediaStore", "media_key"]


class MediaStore(dg.ConfigurableResource):
    """Interface: put bytes under a key, and give the URL clients fetch it from."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store an object (overwriting any earlier take of the same task)."""
        raise NotImplementedError

    def url(self, key: str) -> str:
        """A URL the platform can fetch the object from."""
        raise NotImplementedError


class LocalMediaStore(MediaStore):
    """Embedded default: files under a root directory, served by the API under /media/."""

    root: str
    base_url: str

    def _path(self, key: str) -> Path:
        # The key must be a well-formed project-scoped key (ASCII only: no "..", "%2e", "\\",
        # NUL or look-alike slashes), and the resolved file must stay under its project's
        # directory even where a symlink in the store points elsewhere.
        if not isinstance(key, str) or not MEDIA_KEY_PATTERN.fullmatch(key):
            raise ValueError(f"invalid media key {key!r}")
        root = Path(self.root).resolve()
        project_dir = root / key.split("/", 1)[0]
        path = (root / key).resolve()
        if project_dir not in path.parents:
            raise ValueError(f"media key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write atomically (temp file + rename) so readers never see half a file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def url(self, key: str) -> str:
        """The API serves the local store at /media/{key}."""
        self._path(key)
        return f"{self.base_url.rstrip('/')}/media/{key}"
