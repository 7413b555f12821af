"""Per-project backfills: which partitions need a new take, and launching them in Dagster.

A partition of a media asset is a candidate when the project has tasks of that type in it.
It is

- `missing` when no take of it ever completed (every task was cancelled, say),
- `failed` when its latest task failed,
- `stale` when its latest take's inputs changed since (the sha256 of an input URL's content
  now differs from the one in the take's provenance) or the model id or revision configured
  now differs from the take's.

Partitions with a task still queued or processing are left alone. A backfill launches one
Dagster asset backfill per task type (the backfill daemon then creates one run per
partition), tagged with a priority below every interactive task; the run coordinator turns
each run into a new task whose parent is the partition's latest task.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from moviegen_dagster import store, tags
from moviegen_dagster.settings import ASSET_BY_TASK_TYPE, Settings

REASONS = ("missing", "failed", "stale")
TASK_TYPES = tuple(ASSET_BY_TASK_TYPE)
DEFAULT_REASONS = ("missing", "failed")

# Content types an input may have when it is re-fetched to check its hash.
INPUT_TYPES = ("image/", "audio/", "application/octet-stream")

_LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on Error { message }
  }
}"""


@dataclass(frozen=True)
class Selection:
    """What a backfill covers: task types, optional subjects (scene/character/dialogue ids)."""

    task_types: tuple[str, ...] = TASK_TYPES
    subjects: tuple[str, ...] | None = None
    reasons: tuple[str, ...] = DEFAULT_REASONS
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        """The selection as stored with the backfill."""
        return {
            "task_types": list(self.task_types),
            "subjects": list(self.subjects) if self.subjects is not None else None,
            "reasons": list(self.reasons),
            "dry_run": self.dry_run,
        }


@dataclass
class PlanItem:
    """One partition of one media asset to materialize again, and why."""

    task_type: str
    asset: str
    partition_key: str
    subject: str
    reasons: list[str]
    parent_task_id: str
    details: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """JSON form (stored with the backfill, answered by the API)."""
        return asdict(self)


def current_model(settings: Settings, task_type: str, task_data: dict[str, Any]) -> tuple[str, str]:
    """Model id (as a take records it) and revision a new take of this task would use."""
    if task_type == "generate_image":
        return settings.image_model_ref(), settings.image_model_revision or ""
    if task_type == "generate_video":
        return settings.video_model_ref(), settings.video_model_revision or ""
    model = settings.tts_model_ref()
    if task_data.get("background_noise"):
        model += f" + {settings.ambience_model_ref()}"
    return model, settings.tts_model_revision or ""


Hasher = Callable[[str, str], str | None]


class InputHasher:
    """sha256 of an input URL's content now, fetched under the worker's URL rules (cached)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}

    def __call__(self, url: str, what: str) -> str | None:
        """The hash, or None when the input cannot be fetched now (never counted as stale)."""
        from moviegen_dagster.fetch import Allowlist, FetchError, fetch
        from moviegen_dagster.lineage import sha256

        if url not in self._cache:
            try:
                got = fetch(
                    url,
                    what,
                    Allowlist.parse(self.settings.url_allowlist),
                    self.settings.fetch_max_bytes,
                    timeout=self.settings.fetch_timeout_seconds,
                    accept=INPUT_TYPES,
                )
                self._cache[url] = sha256(got.content)
            except FetchError as exc:
                self._cache[url] = None
                self.errors[url] = str(exc)
        return self._cache[url]


def classify(
    tasks_newest_first: Sequence[store.Row],
    settings: Settings,
    hasher: Hasher | None,
    errors: dict[str, str] | None = None,
) -> tuple[list[str], list[str]] | None:
    """Reasons (and details) to re-materialize one partition of one asset; None if in progress."""
    if any(t["status"] in store.OPEN for t in tasks_newest_first):
        return None
    latest = tasks_newest_first[0]
    if latest["status"] == "failed":
        return ["failed"], ["the latest task failed"]
    take = next((t for t in tasks_newest_first if t["status"] == "completed"), None)
    if take is None:
        return ["missing"], [f"never materialized (latest task {latest['status']})"]
    prov = take.get("provenance") or {}
    if not prov:
        return [], []  # a take from before provenance was recorded: nothing to compare
    details: list[str] = []
    stale = False
    model, revision = current_model(settings, take["task_type"], take["task_data"] or {})
    if prov.get("model") != model or (prov.get("model_revision") or "") != revision:
        stale = True
        details.append(
            f"model changed: {prov.get('model')}@{prov.get('model_revision') or '-'} -> "
            f"{model}@{revision or '-'}"
        )
    if hasher is not None:
        for inp in prov.get("inputs") or []:
            now = hasher(inp["url"], inp["name"])
            if now is None:
                reason = (errors or {}).get(inp["url"], "could not fetch it")
                details.append(f"{inp['name']}: not checked ({reason})")
            elif now != inp["sha256"]:
                stale = True
                details.append(f"{inp['name']}: content changed ({inp['url']})")
    return (["stale"] if stale else []), details


def plan(
    conn: psycopg.Connection[Any],
    project_id: str,
    selection: Selection,
    settings: Settings,
    hasher: Hasher | None = None,
) -> list[PlanItem]:
    """The partitions of the project to re-materialize for this selection, with reasons."""
    rows = store.partition_tasks(conn, project_id, selection.task_types, selection.subjects)
    groups: dict[tuple[str, str], list[store.Row]] = {}
    for row in rows:
        groups.setdefault((row["partition_key"], row["task_type"]), []).append(row)
    check_inputs = "stale" in selection.reasons
    if check_inputs and hasher is None:
        hasher = InputHasher(settings)
    errors = hasher.errors if isinstance(hasher, InputHasher) else None
    items: list[PlanItem] = []
    for (partition_key, task_type), tasks in sorted(groups.items()):
        verdict = classify(tasks, settings, hasher if check_inputs else None, errors)
        if verdict is None:
            continue
        reasons = [r for r in verdict[0] if r in selection.reasons]
        if not reasons:
            continue
        items.append(
            PlanItem(
                task_type=task_type,
                asset=ASSET_BY_TASK_TYPE[task_type],
                partition_key=partition_key,
                subject=partition_key.split("/", 1)[1],
                reasons=reasons,
                parent_task_id=str(tasks[0]["task_id"]),
                details=verdict[1],
            )
        )
    return items


GraphQL = Callable[[str, dict[str, Any], str], dict[str, Any]]


def launch(
    graphql: GraphQL, backfill_id: uuid.UUID, project_id: str, items: Iterable[PlanItem]
) -> list[str]:
    """One Dagster asset backfill per task type (one run per partition); their ids."""
    by_asset: dict[str, list[str]] = {}
    for item in items:
        by_asset.setdefault(item.asset, []).append(item.partition_key)
    ids = []
    for asset, partitions in sorted(by_asset.items()):
        params = {
            "assetSelection": [{"path": [asset]}],
            "partitionNames": sorted(partitions),
            "fromFailure": False,
            "title": f"MovieGen backfill {backfill_id} ({project_id}, {asset})",
            "tags": [
                {"key": tags.PRIORITY, "value": str(tags.BACKFILL_PRIORITY)},
                {"key": tags.BACKFILL_ID, "value": str(backfill_id)},
                {"key": tags.PROJECT_ID, "value": project_id},
            ],
        }
        result = graphql(_LAUNCH_BACKFILL, {"params": params}, "launchPartitionBackfill")
        if result.get("__typename") != "LaunchBackfillSuccess":
            raise RuntimeError(
                f"launchPartitionBackfill: {result.get('__typename')}: {result.get('message')}"
            )
        ids.append(str(result["backfillId"]))
    return ids


def request_backfill(
    conn: psycopg.Connection[Any],
    project_id: str,
    selection: Selection,
    settings: Settings,
    requested_by: str,
    graphql: GraphQL | None,
    hasher: Hasher | None = None,
) -> store.Row:
    """Plan, record and (unless a dry run) launch a backfill; the stored row."""
    items = plan(conn, project_id, selection, settings, hasher)
    if selection.dry_run:
        status = "dry_run"
    elif not items:
        status = "nothing_to_do"
    else:
        status = "launching"
    row = store.insert_backfill(
        conn,
        project_id,
        requested_by,
        selection.as_json(),
        selection.dry_run,
        status,
        [i.as_json() for i in items],
    )
    conn.commit()
    if status != "launching":
        return row
    try:
        if graphql is None:
            raise RuntimeError("no Dagster webserver to launch backfills through")
        ids = launch(graphql, row["backfill_id"], project_id, items)
        new = store.finish_backfill_launch(conn, row["backfill_id"], "launched", ids, None)
    except Exception as exc:
        new = store.finish_backfill_launch(
            conn, row["backfill_id"], "launch_failed", [], f"{type(exc).__name__}: {exc}"[:500]
        )
    conn.commit()
    return new or row


def progress(conn: psycopg.Connection[Any], row: store.Row) -> dict[str, Any]:
    """Planned partitions, the tasks created so far by status, and an overall state."""
    counts = store.backfill_task_counts(conn, row["backfill_id"])
    planned = len(row["plan"])
    created = sum(counts.values())
    open_ = sum(counts.get(s, 0) for s in store.OPEN)
    state = row["status"]
    if state == "launched":
        state = "completed" if created >= planned and open_ == 0 else "running"
    return {
        "state": state,
        "planned": planned,
        "created": created,
        **{
            s: counts.get(s, 0)
            for s in ("queued", "processing", "completed", "failed", "cancelled")
        },
    }


def projects_in_scope(conn: psycopg.Connection[Any], scope: str) -> list[str]:
    """Projects a scheduled backfill covers: a comma list, or `*` for every project with tasks."""
    names = [p.strip() for p in scope.split(",") if p.strip()]
    if "*" in names:
        rows = conn.execute("SELECT DISTINCT project_id FROM moviegen.tasks ORDER BY 1").fetchall()
        return [r["project_id"] for r in rows]
    return names


def parse_reasons(value: str) -> tuple[str, ...]:
    """A comma list of reasons (MOVIEGEN_BACKFILL_REASONS); unknown words are refused."""
    reasons = tuple(r.strip() for r in value.split(",") if r.strip())
    bad = [r for r in reasons if r not in REASONS]
    if bad or not reasons:
        raise ValueError(f"MOVIEGEN_BACKFILL_REASONS: want a comma list of {', '.join(REASONS)}")
    return reasons
