"""Per-process pool of loaded diffusers pipelines, exposed to Dagster as a resource."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import dagster as dg

# kind -> (module, class) loaded with `from_pretrained`. DiffusionPipeline reads the concrete
# class from the checkpoint's model_index.json, so the image model stays a setting
# (FLUX.2-klein today; SDXL or FLUX.1 load the same way).
PIPELINE_CLASSES: dict[str, tuple[str, str]] = {
    "image": ("diffusers", "DiffusionPipeline"),
    "video": ("diffusers", "DiffusionPipeline"),
    "ambience": ("diffusers", "DiffusionPipeline"),
}

# Loaders for kinds that are not a single diffusers pipeline (e.g. a transformers TTS model and
# its processor); generation modules register theirs at import. Each takes the pool key and
# returns the loaded object, already on key.device.
Loader = Callable[["PoolKey"], Any]
LOADERS: dict[str, Loader] = {}


def register_loader(kind: str, loader: Loader) -> None:
    """Teach the pool how to load a kind (idempotent)."""
    LOADERS[kind] = loader


# Accepted dtype names, checked without importing torch.
DTYPES = ("float32", "float16", "bfloat16")


class PoolKey(NamedTuple):
    """Identity of one loaded pipeline: different revisions are different weights."""

    kind: str
    model: str
    revision: str | None
    dtype: str
    device: str


def _check_dtype(dtype: str) -> None:
    """Reject unknown dtype names with a clear message."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _check_device(device: str) -> None:
    """Fail loudly when the requested device does not exist; never fall back to cpu."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda":
        raise ValueError(f"device: must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was requested but CUDA is not available in this process "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})"
        )
    if index:
        if not index.isdigit():
            raise ValueError(f"device: bad CUDA index in {device!r}")
        if int(index) >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )


class ModelPool:
    """Bounded LRU of loaded pipelines keyed by (kind, model, revision, dtype, device)."""

    def __init__(self, capacity: int = 2) -> None:
        """Create an empty pool holding at most `capacity` pipelines."""
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        self._capacity = capacity
        self._pipelines: OrderedDict[PoolKey, Any] = OrderedDict()
        # One lock for lookups, loads and evictions: loading two models at once could need twice
        # the memory, and two threads asking for the same model must not both load it.
        self._lock = threading.Lock()
        self._load_counts: dict[PoolKey, int] = {}
        self.load_seconds: dict[PoolKey, float] = {}

    @property
    def capacity(self) -> int:
        """Maximum number of resident pipelines."""
        return self._capacity

    def resize(self, capacity: int) -> None:
        """Change the capacity, evicting least recently used pipelines beyond it."""
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        with self._lock:
            self._capacity = capacity
            while len(self._pipelines) > capacity:
                self._evict_lru()

    def get_pipeline(
        self, kind: str, model: str, revision: str | None, dtype: str, device: str
    ) -> Any:
        """Return the resident pipeline for these arguments, loading it once if needed."""
        if kind not in PIPELINE_CLASSES and kind not in LOADERS:
            known = ", ".join([*PIPELINE_CLASSES, *LOADERS])
            raise ValueError(f"kind: must be one of {known}, got {kind!r}")
        if not model:
            raise ValueError("model: a model id or local path is required")
        _check_dtype(dtype)
        key = PoolKey(kind, str(model), revision, dtype, device)
        with self._lock:
            pipe = self._pipelines.get(key)
            if pipe is not None:
                self._pipelines.move_to_end(key)
                return pipe
            _check_device(device)
            # Evict before loading so the old weights are freed before the new ones arrive.
            while len(self._pipelines) >= self._capacity:
                self._evict_lru()
            pipe = self._load(key)
            self._pipelines[key] = pipe
            self._load_counts[key] = self._load_counts.get(key, 0) + 1
            return pipe

    def _load(self, key: PoolKey) -> Any:
        """Load one pipeline through from_pretrained, the path production uses with hub ids."""
        import importlib
        import time

        import torch

        if key.kind in LOADERS:
            started = time.perf_counter()
            loaded = LOADERS[key.kind](key)
            self.load_seconds[key] = time.perf_counter() - started
            return loaded
        module_name, class_name = PIPELINE_CLASSES[key.kind]
        pipeline_class = getattr(importlib.import_module(module_name), class_name)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"dtype": getattr(torch, key.dtype)}
        if key.revision is not None:
            kwargs["revision"] = key.revision
        pipe = pipeline_class.from_pretrained(key.model, **kwargs)
        pipe.to(key.device)
        # Progress is reported through callback_on_step_end; tqdm bars would only flood logs.
        pipe.set_progress_bar_config(disable=True)
        self.load_seconds[key] = time.perf_counter() - started
        return pipe

    def _evict_lru(self) -> None:
        """Drop the least recently used pipeline and release its memory (lock held)."""
        _, pipe = self._pipelines.popitem(last=False)
        del pipe
        self._release_memory()

    @staticmethod
    def _release_memory() -> None:
        """Collect dropped pipelines now and return cached CUDA blocks to the driver."""
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def evict(self, key: PoolKey) -> bool:
        """Drop one pipeline; True if it was resident."""
        with self._lock:
            pipe = self._pipelines.pop(key, None)
            if pipe is None:
                return False
            del pipe
            self._release_memory()
            return True

    def clear(self) -> None:
        """Drop every resident pipeline."""
        with self._lock:
            if not self._pipelines:
                return
            self._pipelines.clear()
            self._release_memory()

    def load_count(self, key: PoolKey | None = None) -> int:
        """How many times `key` (or, with None, any key) was loaded; eviction does not reset it."""
        with self._lock:
            if key is None:
                return sum(self._load_counts.values())
            return self._load_counts.get(key, 0)

    def resident_keys(self) -> list[PoolKey]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._pipelines)

    def __contains__(self, key: object) -> bool:
        """Whether `key` is resident."""
        with self._lock:
            return key in self._pipelines

    def __len__(self) -> int:
        """Number of resident pipelines."""
        with self._lock:
            return len(self._pipelines)


_process_pool: ModelPool | None = None
_process_pool_lock = threading.Lock()


def process_pool(capacity: int | None = None) -> ModelPool:
    """The pool of this process, created on first use, so models stay loaded across tasks."""
    global _process_pool
    with _process_pool_lock:
        if _process_pool is None:
            _process_pool = ModelPool(capacity or 2)
        elif capacity is not None and capacity != _process_pool.capacity:
            _process_pool.resize(capacity)
        return _process_pool


class ModelPoolResource(dg.ConfigurableResource):
    """Loaded generation pipelines shared by every op run in this worker process."""

    capacity: int = 2
    device: str = "cpu"
    dtype: str = "float32"

    def pool(self) -> ModelPool:
        """The process-wide pool, sized by this resource's capacity."""
        return process_pool(self.capacity)

    def get_pipeline(self, kind: str, model: str, revision: str | None = None) -> Any:
        """Pipeline for `model` on this resource's device and dtype."""
        return self.pool().get_pipeline(kind, model, revision, self.dtype, self.device)

    def load_count(self, kind: str, model: str, revision: str | None = None) -> int:
        """Loads of that pipeline in this process (stays 1 while it remains resident)."""
        return self.pool().load_count(PoolKey(kind, str(model), revision, self.dtype, self.device))
