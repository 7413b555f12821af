"""Text-to-image generation: prompt building, input validation, seeded runs and JPEG encoding."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import PIL.Image

from moviegen_dagster.generation.common import exclusive_call, labelled, sentence
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.previews import Preview, frame_preview

# Limits checked before the model is touched; the API may be stricter, never looser.
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 100
MAX_REFERENCE_IMAGES = 10  # FLUX.2 accepts up to 10 reference images
MAX_SEED = 2**63 - 1
JPEG_QUALITY = 90


@dataclass
class ImageRequest:
    """One text-to-image generation, already resolved from the task's data."""

    prompt: str
    width: int = 1024
    height: int = 1024
    seed: int | None = None  # None -> a random 31-bit seed is drawn and returned
    steps: int = 4
    guidance_scale: float | None = None  # None -> the pipeline's own default
    reference_images: list[PIL.Image.Image] = field(default_factory=list)


@dataclass
class ImageResult:
    """The encoded image and what is needed to reproduce it."""

    jpeg: bytes
    width: int
    height: int
    seed: int
    steps: int
    generation_seconds: float


def build_prompt(task_data: dict[str, Any]) -> str:
    """Deterministic prompt from a task's character_description, pose and lighting."""
    description = sentence(task_data, "character_description")
    parts = [f"Character design: {description}"]
    parts += labelled(task_data, (("pose", "Pose"), ("lighting", "Lighting")))
    return " ".join(parts)


def size_multiple(pipe: Any) -> int:
    """Pixel multiple the pipeline needs for width and height (16 for FLUX, 8 for SD/SDXL)."""
    # Every diffusers image pipeline configures its image processor with the effective factor
    # (FLUX packs 2x2 latent patches, so its processor holds the VAE factor times two).
    processor = getattr(pipe, "image_processor", None)
    factor = getattr(getattr(processor, "config", None), "vae_scale_factor", None)
    return int(factor) if factor else 16


def validate_request(req: ImageRequest, multiple: int) -> None:
    """Raise ValueError naming the first invalid field of req."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise ValueError("prompt: a non-empty string is required")
    for name in ("width", "height"):
        value = getattr(req, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: must be an integer, got {value!r}")
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"{name}: must be between {MIN_SIDE} and {MAX_SIDE}, got {value}")
        if value % multiple:
            # Rejected rather than rounded: the caller asked for an exact delivery size.
            lower = value - value % multiple
            raise ValueError(
                f"{name}: must be a multiple of {multiple} for this model, got {value} "
                f"(nearest valid: {lower} or {lower + multiple})"
            )
    if isinstance(req.steps, bool) or not isinstance(req.steps, int):
        raise ValueError(f"steps: must be an integer, got {req.steps!r}")
    if not 1 <= req.steps <= MAX_STEPS:
        raise ValueError(f"steps: must be between 1 and {MAX_STEPS}, got {req.steps}")
    if req.seed is not None and (
        isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED
    ):
        raise ValueError(f"seed: must be an integer between 0 and {MAX_SEED}, got {req.seed!r}")
    if req.guidance_scale is not None and not (
        isinstance(req.guidance_scale, int | float) and 0.0 <= req.guidance_scale <= 30.0
    ):
        raise ValueError(f"guidance_scale: must be between 0 and 30, got {req.guidance_scale!r}")
    if len(req.reference_images) > MAX_REFERENCE_IMAGES:
        count = len(req.reference_images)
        raise ValueError(f"reference_images: at most {MAX_REFERENCE_IMAGES} images, got {count}")
    for index, image in enumerate(req.reference_images):
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"reference_images[{index}]: must be a PIL image")


def encode_jpeg(image: PIL.Image.Image) -> bytes:
    """Encode an image as a baseline RGB JPEG (quality 90, optimized Huffman tables)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def generate_image(
    pipe: Any,
    req: ImageRequest,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
) -> ImageResult:
    """Run one seeded text-to-image generation with progress and cooperative cancellation.

    `on_preview` gets a thumbnail of the image as soon as it is decoded.
    """
    validate_request(req, size_multiple(pipe))
    if should_stop is not None and should_stop():
        raise GenerationCancelled("cancelled before generation started")

    import torch

    seed = secrets.randbelow(2**31) if req.seed is None else req.seed
    # A CPU generator gives the same initial noise on every machine and GPU model, so a
    # recorded seed reproduces a take anywhere; diffusers moves the noise to the model's device.
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def on_step_end(
        pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Report progress and stop at this step's end if the task was cancelled."""
        total = getattr(pipeline, "num_timesteps", None) or req.steps
        if on_step is not None:
            on_step(step_index + 1, total)
        # Raising here leaves the pipeline reusable: every call resets its per-call state.
        if should_stop is not None and should_stop():
            raise GenerationCancelled(f"cancelled after step {step_index + 1} of {total}")
        return callback_kwargs

    kwargs: dict[str, Any] = {
        "prompt": req.prompt,
        "width": req.width,
        "height": req.height,
        "num_inference_steps": req.steps,
        "generator": generator,
        "callback_on_step_end": on_step_end,
        "output_type": "pil",
    }
    if req.guidance_scale is not None:
        kwargs["guidance_scale"] = req.guidance_scale
    elif getattr(getattr(pipe, "config", None), "is_distilled", False):
        # Step-distilled FLUX.2-klein ignores guidance; pass 1.0 rather than log a warning per task.
        kwargs["guidance_scale"] = 1.0
    if req.reference_images:
        kwargs["image"] = list(req.reference_images)

    # After an out-of-memory error the retry decodes in tiles (and offloads on CUDA).
    with exclusive_call(pipe):
        started = time.perf_counter()
        output = pipe(**kwargs)
        elapsed = time.perf_counter() - started

    image = output.images[0]
    if image.size != (req.width, req.height):
        raise RuntimeError(
            f"pipeline returned {image.size[0]}x{image.size[1]}, expected {req.width}x{req.height}"
        )
    if on_preview is not None:
        on_preview(frame_preview(image, "image", kind="image"))
    return ImageResult(
        jpeg=encode_jpeg(image),
        width=req.width,
        height=req.height,
        seed=seed,
        steps=req.steps,
        generation_seconds=elapsed,
    )
