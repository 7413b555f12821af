"""Workers refuse to start when a configured model does not resolve, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moviegen_dagster.model_check import ModelUnavailable, check_models
from moviegen_dagster.settings import Settings


def test_local_directories_resolve(tmp_path: Path) -> None:
    for name in ("tiny-image", "tiny-tts", "tiny-ambience", "tiny-video"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    settings = Settings(MOVIEGEN_MODELS_DIR=str(tmp_path))  # type: ignore[call-arg]
    assert len(check_models(settings, "gpu_light")) == 3
    assert check_models(settings, "gpu_heavy") == [f"video: {tmp_path / 'tiny-video'}"]


def test_missing_models_fail_loudly_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    settings = Settings(  # type: ignore[call-arg]
        MOVIEGEN_MODEL_PROFILE="gpu", MOVIEGEN_MODELS_DIR=str(tmp_path)
    )
    with pytest.raises(ModelUnavailable, match="video model Lightricks/LTX-2: not a local"):
        check_models(settings, "gpu_heavy")
    with pytest.raises(ModelUnavailable, match=r"image model black-forest-labs/FLUX\.2-klein-4B"):
        check_models(settings, "gpu_light")
