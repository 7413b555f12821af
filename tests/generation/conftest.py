"""Fixtures for generation tests: one tiny image model per test session."""

from __future__ import annotations

import os

# No test may reach the model hub: tiny models are built locally and loaded from disk.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path
from typing import Any

import pytest

from moviegen_dagster.generation.tiny import build_tiny_image_model
from resources.models import ModelPool


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random-weight image pipeline, built once."""
    return build_tiny_image_model(tmp_path_factory.mktemp("models") / "tiny-image")


@pytest.fixture(scope="session")
def tiny_image_pipe(tiny_image_model: Path) -> Any:
    """The tiny image pipeline loaded through the pool, as a worker would."""
    return ModelPool(capacity=1).get_pipeline(
        "image", str(tiny_image_model), None, "float32", "cpu"
    )
