"""Helpers every generation module shares (no torch import: safe at code-location load)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def words(value: str) -> str:
    """Turn an enum-like value such as "standing_confident" into "standing confident"."""
    return " ".join(value.replace("_", " ").replace("-", " ").split())


def sentence(task_data: dict[str, Any], name: str) -> str:
    """A required free-text field as one clean sentence; ValueError naming the field."""
    value = task_data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: a non-empty string is required")
    return f"{' '.join(value.split()).rstrip('.')}."


def labelled(task_data: dict[str, Any], fields: Sequence[tuple[str, str]]) -> list[str]:
    """ "Label: value." parts for the optional enum-like fields present in task_data."""
    parts = []
    for name, label in fields:
        value = task_data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{name}: must be a string")
        if value.strip():
            parts.append(f"{label}: {words(value)}.")
    return parts


def build_atomically(target_dir: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """Run write(staging) in a sibling temp dir and rename it to target_dir once complete.

    A crash never leaves a half-written model that the `marker` idempotency check would
    accept; a concurrent builder that finished first wins.
    """
    target_dir = Path(target_dir)
    if (target_dir / marker).exists():
        return target_dir
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}-", dir=target_dir.parent))
    try:
        write(staging)
        staging.rename(target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if (target_dir / marker).exists():
            return target_dir
        raise
    return target_dir
