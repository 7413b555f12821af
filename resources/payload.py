"""PayloadCMS: one media document per completed task, holding the generation metadata."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import dagster as dg
import httpx
from pydantic import Field

__all__ = ["GENERATION_FIELDS", "PayloadCMS", "PayloadError", "generation_metadata"]

# Top-level fields of both shipped collections (tests/payload_app/README.md); anything else the
# take recorded goes into the `details` JSON field, since Payload drops unknown fields silently.
GENERATION_FIELDS = (
    "duration",
    "resolution",
    "fps",
    "file_size",
    "model",
    "seed",
    "format",
)

T = TypeVar("T")


class PayloadError(RuntimeError):
    """Payload refused or could not be reached; the message names the collection and cause."""


class _Refused(Exception):
    """A non-2xx answer, carried to the retry loop (which decides whether to try again)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _checked(resp: httpx.Response) -> httpx.Response:
    """The response if it is a success, else _Refused."""
    if not resp.is_success:
        raise _Refused(resp)
    return resp


def generation_metadata(
    project_id: str, task_id: str, task_type: str, media_key: str, meta: dict[str, Any]
) -> dict[str, Any]:
    """The document fields for one take: identifiers, the known fields, the rest in details."""
    doc: dict[str, Any] = {
        "project_id": project_id,
        "task_id": task_id,
        "task_type": task_type,
        "media_key": media_key,
    }
    for name in GENERATION_FIELDS:
        if meta.get(name) is not None:
            doc[name] = meta[name]
    if "seed" in doc:
        # Seeds reach 2**63-1; a JS number would round them, so the field is text.
        doc["seed"] = str(doc["seed"])
    details = {k: v for k, v in meta.items() if k not in GENERATION_FIELDS}
    if details:
        doc["details"] = details
    return doc


def _excerpt(resp: httpx.Response) -> str:
    """Payload's error messages if the body has them, else the start of the body."""
    try:
        body = resp.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            return "; ".join(str(e.get("message", e)) for e in errors)[:300]
    except ValueError:
        pass
    return resp.text[:300]


def _json(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object of a success answer; anything else (a proxy's HTML page) is an error."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PayloadError(
            f"Payload answered {resp.status_code} to {resp.request.method} {resp.request.url} "
            f"with no JSON object: {resp.text[:300]!r}"
        )
    return body


class PayloadCMS(dg.ConfigurableResource):
    """Registers each delivered take as a document in a Payload collection (REST, API key)."""

    url: str = Field(default="", description="Payload's base URL (PAYLOAD_URL), without /api.")
    api_key: str = Field(
        default="", description="API key of a user in the auth collection (PAYLOAD_API_KEY)."
    )
    media_collection: str = Field(
        default="media", description="Collection slug of the media documents."
    )
    auth_collection: str = Field(
        default="users", description="Slug of the auth collection the API key belongs to."
    )
    mode: Literal["url", "upload"] = Field(
        default="url",
        description="url: store the media URL only; upload: send the file for Payload to store.",
    )
    timeout: float = Field(default=10.0, description="Seconds per HTTP request.")
    attempts: int = Field(default=4, description="Tries per request on transient failures.")
    backoff_seconds: float = Field(
        default=1.0, description="Pause before the 2nd try; doubles for each later one."
    )

    @property
    def enabled(self) -> bool:
        """Whether Payload is configured (bound unconfigured, the delivery step skips it)."""
        return bool(self.url and self.api_key)

    def _client(self) -> httpx.Client:
        """A client with Payload's API-key header; no proxies from the environment."""
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"{self.auth_collection} API-Key {self.api_key}"},
            timeout=self.timeout,
            trust_env=False,
        )

    def _with_retries(self, what: str, call: Callable[[httpx.Client], T]) -> T:
        """Run `call`, retrying connection trouble, 5xx, 408 and 429; other 4xx fail at once."""
        attempts = max(1, self.attempts)
        log = dg.get_dagster_logger("moviegen.payload")
        where = f"collection {self.media_collection!r} at {self.url}"
        cause = ""
        with self._client() as client:
            for attempt in range(1, attempts + 1):
                try:
                    return call(client)
                except httpx.TransportError as exc:
                    cause = f"{type(exc).__name__}: {exc}"
                except _Refused as exc:
                    status = exc.response.status_code
                    cause = f"HTTP {status}: {_excerpt(exc.response)}"
                    if not (status >= 500 or status in (408, 429)):
                        raise PayloadError(f"Payload {what} in {where} refused: {cause}") from None
                if attempt < attempts:
                    delay = self.backoff_seconds * 2 ** (attempt - 1)
                    log.warning(
                        f"Payload {what} (attempt {attempt}/{attempts}) failed: {cause}; "
                        f"retrying in {delay:.2f}s"
                    )
                    time.sleep(delay)
        raise PayloadError(
            f"Payload {what} in {where} failed after {attempts} "
            f"attempt{'s' if attempts > 1 else ''}: {cause}"
        )

    def _find_by_task(self, client: httpx.Client, task_id: str) -> str | None:
        """Id of the task's document if an earlier try of this delivery already made one."""
        resp = _checked(
            client.get(
                f"/api/{self.media_collection}",
                params={"where[task_id][equals]": task_id, "limit": 1, "depth": 0},
            )
        )
        docs = _json(resp).get("docs") or []
        return str(docs[0]["id"]) if docs else None

    def register(
        self,
        media_url: str,
        data: bytes | None,
        filename: str,
        content_type: str,
        metadata: dict[str, Any],
    ) -> str:
        """Create (or, for a task already registered, update) its document; returns its id."""
        if not self.enabled:
            raise PayloadError("PayloadCMS is not configured (PAYLOAD_URL and PAYLOAD_API_KEY)")
        if self.mode == "upload" and data is None:
            raise ValueError("PayloadCMS in upload mode needs the file's bytes")
        kwargs: dict[str, Any]
        if self.mode == "url":
            kwargs = {"json": {"url": media_url, "content_type": content_type, **metadata}}
        else:
            # Payload's multipart form: the file under `file`, every other field as one JSON
            # string under `_payload` (a plain form field, not an application/json part).
            fields = {"source_url": media_url, **metadata}
            kwargs = {
                "data": {"_payload": json.dumps(fields)},
                "files": {"file": (filename, data, content_type)},
            }
        task_id = metadata.get("task_id")
        base = f"/api/{self.media_collection}"

        def attempt(client: httpx.Client) -> httpx.Response:
            # One document per task, looked up on every try: a POST whose answer was lost, or a
            # re-executed delivery, updates the document made before instead of duplicating it.
            existing = self._find_by_task(client, str(task_id)) if task_id else None
            if existing:
                return _checked(client.patch(f"{base}/{existing}", **kwargs))
            return _checked(client.post(base, **kwargs))

        resp = self._with_retries("media registration", attempt)
        doc = _json(resp).get("doc")
        if not isinstance(doc, dict) or "id" not in doc:
            raise PayloadError(
                f"Payload media registration in collection {self.media_collection!r} "
                f"answered {resp.status_code} without a document: {resp.text[:300]}"
            )
        # SQLite/Postgres ids are integers, MongoDB's are strings: callers get an opaque string.
        return str(doc["id"])

    def get(self, doc_id: str) -> dict[str, Any]:
        """The media document with this id (depth 0)."""
        path = f"/api/{self.media_collection}/{doc_id}"
        resp = self._with_retries(
            "read", lambda client: _checked(client.get(path, params={"depth": 0}))
        )
        return _json(resp)
