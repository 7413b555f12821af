"""Fast checks of the fault machinery without a stack: markers, back-off, low-memory mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from moviegen_dagster import faults
from moviegen_dagster.assets.common import _is_oom, oom_delay
from moviegen_dagster.generation.common import current_memory_mode, memory_mode
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.generation.image import ImageRequest, generate_image
from moviegen_dagster.generation.tiny import build_tiny_image_model
from moviegen_dagster.settings import Settings
from resources.models import ModelPool

pytestmark = pytest.mark.reliability


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEGEN_FAULT_INJECTION", "1")


def _task(text: str) -> dict[str, Any]:
    return {"task_data": {"character_description": text}}


def test_oom_markers_raise_a_real_cuda_out_of_memory_error(armed: None) -> None:
    for attempt in (1, 2):
        with pytest.raises(torch.cuda.OutOfMemoryError) as caught:
            faults.maybe_inject(_task("FAULT_OOM_TWICE x"), "generate", attempt)
        assert _is_oom(caught.value)
    faults.maybe_inject(_task("FAULT_OOM_TWICE x"), "generate", 3)  # the third succeeds
    with pytest.raises(torch.cuda.OutOfMemoryError):
        faults.maybe_inject(_task("FAULT_OOM_ALWAYS x"), "generate", 7)


def test_markers_match_whole_names_only(armed: None) -> None:
    # FAULT_SLOW_ONCE on a later attempt neither stalls nor counts as FAULT_SLOW.
    faults.maybe_inject(_task("FAULT_SLOW_ONCE x"), "generate", 2, should_stop=lambda: True)
    with pytest.raises(GenerationCancelled):
        faults.maybe_inject(_task("FAULT_SLOW x"), "generate", 2, should_stop=lambda: True)
    with pytest.raises(GenerationCancelled):
        faults.maybe_inject(_task("FAULT_SLOW_ONCE x"), "generate", 1, should_stop=lambda: True)
    # Upload markers do not fire at generation, nor generation markers at upload.
    faults.maybe_inject(_task("FAULT_UPLOAD_ALWAYS x"), "generate", 1)
    faults.maybe_inject(_task("FAULT_OOM_ALWAYS x"), "upload", 1)


def test_markers_are_inert_unless_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOVIEGEN_FAULT_INJECTION", raising=False)
    faults.maybe_inject(_task("FAULT_OOM_ALWAYS FAULT_ALWAYS"), "generate", 1)


def test_oom_delay_doubles_is_capped_and_jittered() -> None:
    s = Settings(
        MOVIEGEN_OOM_RETRY_BASE_SECONDS=2,  # type: ignore[call-arg]
        MOVIEGEN_OOM_RETRY_MAX_SECONDS=5,
        MOVIEGEN_OOM_RETRY_JITTER=0.25,
    )
    first = [oom_delay(1, s) for _ in range(200)]
    second = [oom_delay(2, s) for _ in range(200)]
    third = [oom_delay(3, s) for _ in range(200)]
    assert min(first) >= 1.5 and max(first) <= 2.5
    assert min(second) >= 3.0 and max(second) <= 5.0
    assert min(third) >= 3.75 and max(third) <= 6.25  # capped at 5 before jitter
    assert len(set(first)) > 50  # jittered, not a fixed delay
    no_jitter = Settings(MOVIEGEN_OOM_RETRY_JITTER=0)  # type: ignore[call-arg]
    assert [oom_delay(n, no_jitter) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model: Path = build_tiny_image_model(tmp_path_factory.mktemp("models") / "tiny-image")
    return ModelPool(capacity=1).get_pipeline("image", str(model), None, "float32", "cpu")


def test_low_memory_mode_tiles_the_vae_for_one_call_then_reverts(tiny_pipe: Any) -> None:
    request = ImageRequest(prompt="Character design: a detective.", width=64, height=64, seed=3)
    request.steps = 1
    normal = generate_image(tiny_pipe, request)
    assert current_memory_mode().applied == []
    with memory_mode(True) as mode:
        low = generate_image(tiny_pipe, request)
    assert {"vae_tiling", "vae_slicing"} <= set(mode.applied)
    assert "model_cpu_offload" not in mode.applied  # CPU pipelines are not offloaded
    # The pooled pipeline is left as it was for the next task.
    assert tiny_pipe.vae.use_tiling is False and tiny_pipe.vae.use_slicing is False
    assert (low.width, low.height, low.seed) == (normal.width, normal.height, normal.seed)
