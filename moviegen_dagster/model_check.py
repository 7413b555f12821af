"""Start-up check that every model a worker type needs resolves locally: fail loudly, by name."""

from __future__ import annotations

from pathlib import Path

from moviegen_dagster.settings import Settings


class ModelUnavailable(RuntimeError):
    """A configured model is neither a local directory nor in the local Hugging Face cache."""


def models_for(settings: Settings, worker_type: str) -> list[tuple[str, str, str | None]]:
    """(role, model id or path, revision) of every model the worker type loads."""
    if worker_type == "gpu_heavy":
        return [("video", settings.video_model_ref(), settings.video_model_revision)]
    return [
        ("image", settings.image_model_ref(), settings.image_model_revision),
        ("tts", settings.tts_model_ref(), settings.tts_model_revision),
        ("ambience", settings.ambience_model_ref(), settings.ambience_model_revision),
    ]


def resolve(model: str, revision: str | None) -> Path:
    """The local directory holding a model; never downloads."""
    path = Path(model)
    if path.is_dir():
        if not any((path / name).exists() for name in ("model_index.json", "config.json")):
            raise ModelUnavailable(f"{model}: directory has no model_index.json or config.json")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as exc:  # the hub client raises several types for "not cached"
        raise ModelUnavailable(
            f"{model}{'@' + revision if revision else ''}: not a local directory and not in "
            f"the Hugging Face cache ({type(exc).__name__}); download it before starting workers"
        ) from exc


def check_models(settings: Settings, worker_type: str) -> list[str]:
    """Resolve every model of the worker type; raise naming each one that does not."""
    problems, found = [], []
    for role, model, revision in models_for(settings, worker_type):
        try:
            found.append(f"{role}: {resolve(model, revision)}")
        except ModelUnavailable as exc:
            problems.append(f"{role} model {exc}")
    if problems:
        raise ModelUnavailable("; ".join(problems))
    return found
