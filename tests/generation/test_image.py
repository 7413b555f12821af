"""Tiny-model tests of image generation, the model pool and the tiny model builder."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.generation.image import ImageRequest, build_prompt, generate_image
from moviegen_dagster.generation.tiny import build_tiny_image_model
from resources.models import ModelPool, ModelPoolResource, PoolKey, process_pool

REPO_ROOT = Path(__file__).resolve().parents[2]


def _decode(jpeg: bytes) -> PIL.Image.Image:
    """Decode JPEG bytes, checking the format."""
    image = PIL.Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    image.load()
    return image


def test_full_size_image_is_a_1024_jpeg(tiny_image_pipe: Any) -> None:
    """The delivery size, 1024x1024, comes back as a JPEG of exactly that size."""
    result = generate_image(tiny_image_pipe, ImageRequest(prompt="a detective", seed=3))
    image = _decode(result.jpeg)
    assert image.size == (1024, 1024)
    assert image.mode == "RGB"
    assert (result.width, result.height, result.seed, result.steps) == (1024, 1024, 3, 4)
    assert result.generation_seconds > 0


def test_same_seed_reproduces_and_other_seed_differs(tiny_image_pipe: Any) -> None:
    """A recorded seed reproduces the take byte for byte; another seed changes it."""
    request = ImageRequest(prompt="a detective", width=256, height=192, steps=2, seed=11)
    first = generate_image(tiny_image_pipe, request)
    again = generate_image(tiny_image_pipe, request)
    other = generate_image(
        tiny_image_pipe, ImageRequest(prompt="a detective", width=256, height=192, steps=2, seed=12)
    )
    assert _decode(first.jpeg).size == (256, 192)
    assert first.jpeg == again.jpeg
    assert _decode(first.jpeg).tobytes() != _decode(other.jpeg).tobytes()


def test_random_seed_is_drawn_and_returned(tiny_image_pipe: Any) -> None:
    """Without a seed a 31-bit one is drawn, and replaying it gives the same image."""
    drawn = generate_image(tiny_image_pipe, ImageRequest(prompt="x", width=64, height=64, steps=1))
    assert 0 <= drawn.seed < 2**31
    replay = generate_image(
        tiny_image_pipe, ImageRequest(prompt="x", width=64, height=64, steps=1, seed=drawn.seed)
    )
    assert replay.jpeg == drawn.jpeg


def test_progress_is_reported_every_step(tiny_image_pipe: Any) -> None:
    """on_step sees (1, n) .. (n, n), in order."""
    calls: list[tuple[int, int]] = []
    generate_image(
        tiny_image_pipe,
        ImageRequest(prompt="a detective", width=64, height=64, steps=3, seed=1),
        on_step=lambda step, total: calls.append((step, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_preview_is_a_thumbnail_of_the_decoded_image(tiny_image_pipe: Any) -> None:
    """on_preview gets the image itself (as a JPEG of at most 320 px) once it is decoded."""
    previews: list[Any] = []
    result = generate_image(
        tiny_image_pipe,
        ImageRequest(prompt="a detective", width=512, height=256, steps=1, seed=2),
        on_preview=previews.append,
    )
    [preview] = previews
    assert (preview.kind, preview.label, preview.media_type) == ("image", "image", "image/jpeg")
    assert (preview.width, preview.height) == (320, 160)
    full = PIL.Image.open(io.BytesIO(result.jpeg)).convert("RGB").resize((320, 160))
    shown = PIL.Image.open(io.BytesIO(preview.data)).convert("RGB")
    difference = np.abs(np.asarray(full, np.int16) - np.asarray(shown, np.int16))
    assert float(difference.mean()) < 12


def test_should_stop_cancels_at_the_next_step(tiny_image_pipe: Any) -> None:
    """should_stop turning true stops the run with GenerationCancelled; the pipe stays usable."""
    calls: list[int] = []
    with pytest.raises(GenerationCancelled):
        generate_image(
            tiny_image_pipe,
            ImageRequest(prompt="a detective", width=64, height=64, steps=4, seed=1),
            on_step=lambda step, total: calls.append(step),
            should_stop=lambda: len(calls) >= 2,
        )
    assert calls == [1, 2]
    after = generate_image(tiny_image_pipe, ImageRequest(prompt="a", width=64, height=64, steps=1))
    assert _decode(after.jpeg).size == (64, 64)


def test_reference_images_are_accepted(tiny_image_pipe: Any) -> None:
    """Several reference images condition the generation (FLUX.2's `image=`)."""
    references = [PIL.Image.new("RGB", (96, 128), color) for color in ("red", "blue")]
    plain = ImageRequest(prompt="a detective", width=128, height=128, steps=2, seed=5)
    with_refs = ImageRequest(
        prompt="a detective", width=128, height=128, steps=2, seed=5, reference_images=references
    )
    result = generate_image(tiny_image_pipe, with_refs)
    assert _decode(result.jpeg).size == (128, 128)
    assert result.jpeg != generate_image(tiny_image_pipe, plain).jpeg


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 1000}, "width"),
        ({"height": 1036}, "height"),
        ({"width": 4096}, "width"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"prompt": "  "}, "prompt"),
        ({"reference_images": ["not an image"]}, "reference_images"),
    ],
)
def test_invalid_requests_fail_before_the_model_runs(
    tiny_image_pipe: Any, changes: dict[str, Any], field: str
) -> None:
    """Bad inputs raise a ValueError naming the field, and no denoising step runs."""
    calls: list[int] = []
    request = ImageRequest(**{"prompt": "a detective", **changes})
    with pytest.raises(ValueError, match=rf"^{field}"):
        generate_image(tiny_image_pipe, request, on_step=lambda step, total: calls.append(step))
    assert calls == []


def test_build_prompt_is_deterministic() -> None:
    """Quickstart scenario 2 fields become one clear prompt; missing description is an error."""
    task_data = {
        "character_description": "Detective in 1920s noir style",
        "pose": "standing_confident",
        "lighting": "dramatic_shadow",
    }
    expected = (
        "Character design: Detective in 1920s noir style. "
        "Pose: standing confident. Lighting: dramatic shadow."
    )
    assert build_prompt(task_data) == expected
    assert build_prompt(dict(reversed(task_data.items()))) == expected
    assert build_prompt({"character_description": "A cat."}) == "Character design: A cat."
    with pytest.raises(ValueError, match=r"^character_description"):
        build_prompt({"pose": "sitting"})


def test_pool_loads_once_and_evicts_beyond_capacity(tiny_image_model: Path, tmp_path: Path) -> None:
    """Repeated requests reuse the resident pipeline; a third model evicts the least recent."""
    model_a = str(tiny_image_model)
    model_b = str(shutil.copytree(tiny_image_model, tmp_path / "b"))
    model_c = str(shutil.copytree(tiny_image_model, tmp_path / "c"))
    pool = ModelPool(capacity=2)
    key_a = PoolKey("image", model_a, None, "float32", "cpu")

    first = pool.get_pipeline("image", model_a, None, "float32", "cpu")
    assert pool.get_pipeline("image", model_a, None, "float32", "cpu") is first
    assert pool.load_count(key_a) == 1
    assert pool.load_count() == 1

    pool.get_pipeline("image", model_b, None, "float32", "cpu")
    pool.get_pipeline("image", model_a, None, "float32", "cpu")  # a is now most recent
    pool.get_pipeline("image", model_c, None, "float32", "cpu")  # evicts b
    assert [key.model for key in pool.resident_keys()] == [model_a, model_c]
    assert pool.load_count() == 3

    pool.get_pipeline("image", model_b, None, "float32", "cpu")  # evicts a, reloads b
    assert key_a not in pool
    assert len(pool) == 2
    assert pool.load_count() == 4


def test_pool_refuses_unavailable_cuda_and_unknown_settings(tiny_image_model: Path) -> None:
    """A cuda request without CUDA fails loudly instead of silently running on cpu."""
    import torch

    pool = ModelPool(capacity=1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pool.get_pipeline("image", str(tiny_image_model), None, "float32", "cuda")
    with pytest.raises(ValueError, match=r"^dtype"):
        pool.get_pipeline("image", str(tiny_image_model), None, "float64", "cpu")
    with pytest.raises(ValueError, match=r"^kind"):
        pool.get_pipeline("sculpture", str(tiny_image_model), None, "float32", "cpu")
    assert pool.load_count() == 0


def test_resource_returns_the_process_pool() -> None:
    """Every resource instance in a process shares one pool, sized by its capacity."""
    previous = process_pool().capacity
    try:
        resource = ModelPoolResource(capacity=3)
        assert resource.pool() is process_pool()
        assert process_pool().capacity == 3
    finally:
        process_pool(previous)


def test_builder_is_idempotent(tiny_image_model: Path) -> None:
    """A second build into an existing model directory returns at once, leaving it untouched."""
    index = tiny_image_model / "model_index.json"
    before = index.stat().st_mtime_ns
    assert build_tiny_image_model(tiny_image_model) == tiny_image_model
    assert index.stat().st_mtime_ns == before
    assert {path.name for path in tiny_image_model.iterdir()} >= {
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    }


def test_builder_is_deterministic(tiny_image_model: Path, tmp_path: Path) -> None:
    """Two builds write byte-identical weights and configs (torch is seeded before init)."""
    rebuilt = build_tiny_image_model(tmp_path / "tiny-image")

    def digest(root: Path) -> dict[str, str]:
        """SHA-256 of every file under root, by relative path."""
        return {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    assert digest(rebuilt) == digest(tiny_image_model)


def test_modules_import_without_torch() -> None:
    """The Dagster code location can import these modules without loading torch or diffusers."""
    code = (
        "import sys\n"
        "import moviegen_dagster.generation.image, moviegen_dagster.generation.tiny\n"
        "import moviegen_dagster.generation.errors, resources.models\n"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
