"""The URL a client is given for a stored media key (no dagster import: the API uses it)."""

from __future__ import annotations

from typing import Any

from moviegen_dagster.ids import MEDIA_KEY_PATTERN
from moviegen_dagster.settings import Settings


def media_url(settings: Settings, key: str) -> str:
    """Public R2 URL, a freshly signed R2 URL, or the API's local /media route."""
    if not MEDIA_KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid media key {key!r}")
    if settings.r2_configured:
        if settings.r2_public_base_url:
            return f"{settings.r2_public_base_url.rstrip('/')}/{key}"
        from moviegen_dagster.r2_urls import presign_get

        assert settings.r2_access_key_id and settings.r2_secret_access_key
        return presign_get(
            str(settings.r2_endpoint_url),
            settings.r2_region,
            settings.r2_access_key_id.get_secret_value(),
            settings.r2_secret_access_key.get_secret_value(),
            str(settings.r2_bucket),
            key,
            settings.r2_presign_seconds,
        )
    return f"{settings.api_base_url}/media/{key}"


def stable_media_url(settings: Settings, key: str) -> str:
    """A URL that never expires: the public bucket URL, else the API's /media route."""
    if settings.r2_configured and settings.r2_public_base_url:
        return f"{settings.r2_public_base_url.rstrip('/')}/{key}"
    return f"{settings.api_base_url}/media/{key}"


def with_fresh_url(settings: Settings, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored result with media_url derived from its key now (presigned URLs expire)."""
    if not result or not result.get("media_key"):
        return result
    return {**result, "media_url": media_url(settings, result["media_key"])}
