"""Helpers every generation module shares (no torch import: safe at code-location load)."""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
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


@dataclass
class MemoryMode:
    """Whether this attempt runs in low-memory mode, and what was applied to save memory."""

    low_memory: bool = False
    applied: list[str] = field(default_factory=list)


# Set by the step for one attempt (after an out-of-memory error); read by the generators.
_memory_mode: ContextVar[MemoryMode | None] = ContextVar("moviegen_memory_mode", default=None)


@contextmanager
def memory_mode(low_memory: bool) -> Iterator[MemoryMode]:
    """Run the enclosed generation in low-memory mode (or not); yields what gets applied."""
    mode = MemoryMode(low_memory=low_memory)
    token = _memory_mode.set(mode)
    try:
        yield mode
    finally:
        _memory_mode.reset(token)


def current_memory_mode() -> MemoryMode:
    """The memory mode of the running attempt (normal outside a step)."""
    return _memory_mode.get() or MemoryMode()


@contextmanager
def memory_savings(pipe: Any) -> Iterator[list[str]]:
    """In low-memory mode, lower the pipeline's peak memory for one call, then undo it.

    Tiled and sliced VAE decoding work on every diffusers autoencoder that implements them
    (FLUX.2's AutoencoderKLFlux2, LTX-2's video VAE, ...); model CPU offload only makes
    sense on CUDA. Pooled pipelines are shared across tasks, so everything is reverted.
    """
    mode = current_memory_mode()
    if not mode.low_memory:
        yield []
        return
    applied: list[str] = []
    restore: list[Callable[[], None]] = []
    components = getattr(pipe, "components", None) or {}
    for name, module in components.items():
        for flag, label in (("use_tiling", "tiling"), ("use_slicing", "slicing")):
            if hasattr(module, flag) and isinstance(getattr(module, flag), bool):
                old = getattr(module, flag)
                setattr(module, flag, True)
                restore.append(functools.partial(setattr, module, flag, old))
                applied.append(f"{name}_{label}")
    device = getattr(pipe, "device", None)
    offloaded = False
    if getattr(device, "type", "cpu") == "cuda" and hasattr(pipe, "enable_model_cpu_offload"):
        try:
            pipe.enable_model_cpu_offload(device=device)
            offloaded = True
            applied.append("model_cpu_offload")
        except Exception:  # accelerate missing or the pipeline cannot offload: tiling only
            offloaded = False
    mode.applied.extend(a for a in applied if a not in mode.applied)
    try:
        yield applied
    finally:
        if offloaded:
            pipe.remove_all_hooks()
            pipe.to(device)
        for undo in reversed(restore):
            undo()


# A pipeline object keeps per-call state (scheduler timesteps, guidance scales, interrupt
# flags, the memory settings above), so two calls on one pooled instance must not overlap.
_pipe_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_pipe_locks_guard = threading.Lock()


@contextmanager
def exclusive_call(pipe: Any) -> Iterator[list[str]]:
    """Hold the pipeline for one call (one lock per instance), in the attempt's memory mode."""
    with _pipe_locks_guard:
        lock = _pipe_locks.get(pipe)
        if lock is None:
            lock = _pipe_locks[pipe] = threading.Lock()
    with lock, memory_savings(pipe) as applied:
        yield applied
