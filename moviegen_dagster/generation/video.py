"""Storyboard-to-video generation with LTX-2: keyframes, chained clips, audio, MP4 delivery."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from moviegen_dagster.generation.common import exclusive_call, labelled, sentence, words
from moviegen_dagster.generation.encode_video import (
    AUDIO_CODEC,
    VIDEO_CODEC,
    delivery_sample_rate,
    encode_mp4,
)
from moviegen_dagster.generation.errors import GenerationCancelled

# Light import (no torch at module level): the marker file the tiny builder writes.
from moviegen_dagster.generation.tiny_video import TINY_MARKER
from moviegen_dagster.previews import Preview, frame_preview

# Limits checked before the model is touched; the API may be stricter, never looser.
MIN_DURATION, MAX_DURATION = 1.0, 30.0
MIN_FPS, MAX_FPS = 1, 60
MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 3840, 2160
MAX_KEYFRAMES = 16
MAX_STEPS = 100
MAX_SEED = 2**63 - 1

# LTX-2 renders at 24 fps; delivery fps is reached by retiming afterwards.
MODEL_FPS = 24
# Frames per clip: 8k+1 (the VAE packs 8 frames per latent after the first). 121 frames (~5 s)
# is LTX-2's default clip; 257 (~10.7 s) its longest.
DEFAULT_CLIP_FRAMES = 121
MIN_CLIP_FRAMES, MAX_CLIP_FRAMES = 9, 257
# Longer side of the default generation size per profile. The delivery size is reached by
# resizing, so the tiny profile renders very small frames; the gpu profile LTX-2's usual ~768.
TINY_GEN_LONG_SIDE = 128
GPU_GEN_LONG_SIDE = 768
# LTX-2's prompt length. A tokenizer with a lower limit (the tiny model's 256) shortens it, which
# keeps the tiny model's cross-attention cheap without tiny-only code.
DEFAULT_MAX_SEQUENCE_LENGTH = 1024
# Pipeline arguments generate_video derives itself; pipeline_kwargs may not override them.
_MANAGED_KWARGS = frozenset(
    {
        "conditions",
        "prompt",
        "width",
        "height",
        "num_frames",
        "frame_rate",
        "num_inference_steps",
        "generator",
        "callback_on_step_end",
        "output_type",
        "return_dict",
        "latents",
        "audio_latents",
    }
)


@dataclass
class VideoRequest:
    """One storyboard-to-video generation, already resolved from the task's data."""

    prompt: str
    keyframes: list[PIL.Image.Image]
    duration: float = 7.0  # seconds of delivered video (and audio)
    width: int = 1920  # delivery size; the model renders smaller and frames are resized
    height: int = 1080
    fps: int = 24  # delivery frame rate; the model renders at MODEL_FPS and is retimed
    seed: int | None = None  # None -> a random 31-bit seed is drawn and returned
    steps: int = 4  # denoising steps per clip
    clip_frames: int | None = None  # frames per generated clip at model resolution (8k+1)


@dataclass
class VideoResult:
    """The encoded MP4 and what is needed to reproduce it."""

    mp4: bytes
    width: int
    height: int
    fps: int
    duration: float
    seed: int
    audio_sample_rate: int  # of the AAC track in the MP4
    video_codec: str
    audio_codec: str
    clips: int
    generation_seconds: float  # time inside the pipeline, all clips; excludes MP4 encoding


@dataclass
class ClipPlan:
    """One generated clip: its first frame on the model-fps timeline and its frame count."""

    start: int
    frames: int
    # (latent index, keyframe index into VideoRequest.keyframes) pairs for this clip.
    keyframes: list[tuple[int, int]] = field(default_factory=list)


def _labels(task_data: dict[str, Any], name: str) -> list[str]:
    """A task_data field holding one label or a list of labels, as cleaned words."""
    value = task_data.get(name)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name}: must be a string or a list of strings")
    return [words(item) for item in items if item.strip()]


def build_video_prompt(task_data: dict[str, Any]) -> str:
    """Deterministic prompt from the scene, camera, lighting, character positions, audio cues."""
    parts = [sentence(task_data, "scene_description")]
    parts += labelled(task_data, (("camera_angle", "Camera"), ("lighting", "Lighting")))
    positions = _labels(task_data, "character_positions")
    if positions:
        parts.append(f"Character positions: {', '.join(positions)}.")
    # LTX-2 generates the soundtrack from the same prompt, so the cues go in as audio text.
    cues = _labels(task_data, "audio_cues")
    if cues:
        parts.append(f"Audio: {', '.join(cues)}.")
    return " ".join(parts)


def _is_int(value: Any) -> bool:
    """True for ints that are not bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate_request(req: VideoRequest) -> None:
    """Raise ValueError naming the first invalid field of req."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise ValueError("prompt: a non-empty string is required")
    if not isinstance(req.keyframes, list) or not req.keyframes:
        raise ValueError("keyframes: at least 1 storyboard image is required")
    if len(req.keyframes) > MAX_KEYFRAMES:
        count = len(req.keyframes)
        raise ValueError(f"keyframes: at most {MAX_KEYFRAMES} images, got {count}")
    for index, image in enumerate(req.keyframes):
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"keyframes[{index}]: must be a PIL image")
    duration = req.duration
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise ValueError(f"duration: must be a number of seconds, got {duration!r}")
    if not (math.isfinite(duration) and MIN_DURATION <= duration <= MAX_DURATION):
        raise ValueError(
            f"duration: must be between {MIN_DURATION:g} and {MAX_DURATION:g} s, got {duration}"
        )
    if not _is_int(req.fps) or not MIN_FPS <= req.fps <= MAX_FPS:
        raise ValueError(
            f"fps: must be an integer between {MIN_FPS} and {MAX_FPS}, got {req.fps!r}"
        )
    for name, limit in (("width", MAX_WIDTH), ("height", MAX_HEIGHT)):
        value = getattr(req, name)
        if not _is_int(value):
            raise ValueError(f"{name}: must be an integer, got {value!r}")
        if not MIN_SIDE <= value <= limit:
            raise ValueError(f"{name}: must be between {MIN_SIDE} and {limit}, got {value}")
        if value % 2:
            # H.264 yuv420p subsamples chroma 2x2, so odd sizes cannot be encoded.
            raise ValueError(f"{name}: must be even for H.264, got {value}")
    if not _is_int(req.steps) or not 1 <= req.steps <= MAX_STEPS:
        raise ValueError(f"steps: must be an integer between 1 and {MAX_STEPS}, got {req.steps!r}")
    if req.seed is not None and (not _is_int(req.seed) or not 0 <= req.seed <= MAX_SEED):
        raise ValueError(f"seed: must be an integer between 0 and {MAX_SEED}, got {req.seed!r}")
    if req.clip_frames is not None:
        frames = req.clip_frames
        if not _is_int(frames) or not MIN_CLIP_FRAMES <= frames <= MAX_CLIP_FRAMES:
            raise ValueError(
                f"clip_frames: must be an integer between {MIN_CLIP_FRAMES} and "
                f"{MAX_CLIP_FRAMES}, got {frames!r}"
            )
        if (frames - 1) % 8:
            lower = frames - (frames - 1) % 8
            raise ValueError(
                f"clip_frames: must be 8k+1 for LTX-2, got {frames} "
                f"(nearest valid: {lower} or {lower + 8})"
            )


def size_multiple(pipe: Any) -> int:
    """Pixel multiple the pipeline needs for width and height (32 for LTX-2)."""
    factor = getattr(pipe, "vae_spatial_compression_ratio", None) or 32
    patch = getattr(pipe, "transformer_spatial_patch_size", None) or 1
    return int(factor) * int(patch)


def _is_tiny(pipe: Any) -> bool:
    """Whether pipe was loaded from a directory built by build_tiny_video_model."""
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None) or getattr(
        pipe, "name_or_path", None
    )
    if not name:
        return False
    try:
        return (Path(str(name)) / TINY_MARKER).is_file()
    except OSError:
        return False


def default_generation_size(pipe: Any, width: int, height: int) -> tuple[int, int]:
    """The model's valid size nearest the delivery aspect with its longer side <= the profile's."""
    multiple = size_multiple(pipe)
    long_side = TINY_GEN_LONG_SIDE if _is_tiny(pipe) else GPU_GEN_LONG_SIDE
    long_side = max(multiple, long_side // multiple * multiple)
    ratio = min(width, height) / max(width, height)
    short_side = min(long_side, max(multiple, round(long_side * ratio / multiple) * multiple))
    return (long_side, short_side) if width >= height else (short_side, long_side)


def _check_generation_size(
    pipe: Any, gen_width: int | None, gen_height: int | None
) -> tuple[int, int] | None:
    """Validate explicit generation sizes; None when both are left to the default."""
    if gen_width is None and gen_height is None:
        return None
    if gen_width is None or gen_height is None:
        raise ValueError("gen_width: give both gen_width and gen_height, or neither")
    multiple = size_multiple(pipe)
    for name, value in (("gen_width", gen_width), ("gen_height", gen_height)):
        if not _is_int(value) or not multiple <= value <= max(MAX_WIDTH, MAX_HEIGHT):
            raise ValueError(
                f"{name}: must be an integer between {multiple} and 3840, got {value!r}"
            )
        if value % multiple:
            lower = value - value % multiple
            raise ValueError(
                f"{name}: must be a multiple of {multiple} for this model, got {value} "
                f"(nearest valid: {lower} or {lower + multiple})"
            )
    return gen_width, gen_height


def model_frames(duration: float, fps: int) -> int:
    """Model-fps frames to generate: every frame shown, and enough to cover the audio."""
    delivered = max(1, round(duration * fps)) / fps
    shown = int(retime_indices(duration, fps)[-1]) + 1
    return max(2, shown, math.ceil(delivered * MODEL_FPS - 1e-9))


def plan_clips(duration: float, fps: int, keyframe_count: int, clip_frames: int) -> list[ClipPlan]:
    """Split the model-fps timeline into chained 8k+1-frame clips and place the keyframes."""
    needed = model_frames(duration, fps)
    blocks = math.ceil((needed - 1) / 8)  # 8-frame latent steps after the first frame
    per_clip = (clip_frames - 1) // 8
    count = math.ceil(blocks / per_clip)
    plans: list[ClipPlan] = []
    start = 0
    for index in range(count):
        # Spread the blocks evenly so no clip is much shorter than the others.
        clip_blocks = blocks // count + (1 if index < blocks % count else 0)
        plans.append(ClipPlan(start=start, frames=8 * clip_blocks + 1))
        # Consecutive clips share a frame: the next clip starts on this clip's last frame.
        start += 8 * clip_blocks

    # Storyboard frames spread over the whole delivered timeline: first at 0, last at the end.
    for key in range(keyframe_count):
        target = 0 if keyframe_count == 1 else round(key * (needed - 1) / (keyframe_count - 1))
        # A frame on a clip boundary belongs to the earlier clip (its end), because the later
        # clip's first frame is already fixed by chaining.
        index = 0
        while index + 1 < count and target > plans[index].start + plans[index].frames - 1:
            index += 1
        plan = plans[index]
        local = target - plan.start
        last_latent = (plan.frames - 1) // 8
        # Latent L > 0 covers pixel frames 8(L-1)+1 .. 8L; the keyframe goes to the nearest one.
        latent = 0 if local == 0 else min(last_latent, max(1, round((local - 1) / 8) + 1))
        # Two storyboard frames landing on the same latent: the later one wins.
        plan.keyframes = [(lat, k) for lat, k in plan.keyframes if lat != latent]
        plan.keyframes.append((latent, key))
    return plans


def retime_indices(duration: float, fps: int) -> np.ndarray:
    """For each delivered frame (round(duration * fps) of them), the model-fps frame it shows."""
    count = max(1, round(duration * fps))
    # Frame j is on screen from j / fps; it shows the model frame on screen at that instant
    # (sample and hold). The epsilon absorbs float error at exact ratios such as 48 -> 24 fps.
    return (np.arange(count, dtype=np.float64) * MODEL_FPS / fps + 1e-6).astype(np.int64)


def _place_audio(track: np.ndarray, clip_audio: np.ndarray, offset: int, filled: int) -> int:
    """Write clip_audio into track at offset, crossfading over already-filled samples."""
    end = min(track.shape[1], offset + clip_audio.shape[1])
    if end <= offset:
        return filled
    clip_audio = clip_audio[:, : end - offset]
    overlap = max(0, min(filled, end) - offset)
    if overlap:
        # Consecutive clips both cover the shared frame; a short linear crossfade avoids a click.
        ramp = np.linspace(0.0, 1.0, overlap, dtype=np.float32)
        track[:, offset : offset + overlap] *= 1.0 - ramp
        track[:, offset : offset + overlap] += clip_audio[:, :overlap] * ramp
    track[:, offset + overlap : end] = clip_audio[:, overlap:]
    return max(filled, end)


def configure_pipeline(pipe: Any) -> None:
    """Apply per-instance settings that from_pretrained does not restore from the configs."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        # Framewise (temporal-tile) VAE encode/decode is a runtime flag, not saved in the config;
        # clips are decoded at generation size, so whole-clip decoding fits and avoids seams.
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False


def _max_sequence_length(pipe: Any) -> int:
    """Prompt tokens per call: LTX-2's 1024, or fewer if the tokenizer's limit is lower."""
    limit = int(min(DEFAULT_MAX_SEQUENCE_LENGTH, getattr(pipe.tokenizer, "model_max_length", 1024)))
    # The text connectors tile learnable registers over the padded prompt, so the length must be
    # a multiple of their count (128 in LTX-2).
    connectors = getattr(pipe, "connectors", None)
    registers = getattr(
        getattr(connectors, "config", None), "video_connector_num_learnable_registers", None
    )
    if registers:
        limit = max(int(registers), limit // int(registers) * int(registers))
    return limit


def _audio_rate(pipe: Any) -> int:
    """Sample rate of the waveform the pipeline's vocoder returns."""
    vocoder = getattr(pipe, "vocoder", None)
    rate = getattr(getattr(vocoder, "config", None), "output_sampling_rate", None)
    return int(rate) if rate else 24000


def generate_video(
    pipe: Any,
    req: VideoRequest,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    gen_width: int | None = None,
    gen_height: int | None = None,
    *,
    pipeline_kwargs: dict[str, Any] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
) -> VideoResult:
    """Generate chained LTX-2 clips from storyboard keyframes and deliver an H.264/AAC MP4.

    `on_phase` hears "generating_audio" once the last denoising step is done (the pipeline then
    decodes the frames and vocodes the soundtrack) and "encoding" before the MP4 is written.
    `on_preview` gets a thumbnail of the last frame of each clip as the clip is done.
    """
    # pipeline_kwargs reach every pipeline call unchanged: the profile's guidance settings, e.g.
    # guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0 for a step-distilled checkpoint
    # (one transformer pass per step instead of three).
    validate_request(req)
    explicit = _check_generation_size(pipe, gen_width, gen_height)
    gen_w, gen_h = explicit or default_generation_size(pipe, req.width, req.height)
    if should_stop is not None and should_stop():
        raise GenerationCancelled("cancelled before generation started")

    import torch
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    extra = dict(pipeline_kwargs or {})
    clash = sorted(set(extra) & _MANAGED_KWARGS)
    if clash:
        raise ValueError(f"pipeline_kwargs: {', '.join(clash)} are set by generate_video")

    configure_pipeline(pipe)
    max_sequence_length = _max_sequence_length(pipe)
    seed = secrets.randbelow(2**31) if req.seed is None else req.seed
    plans = plan_clips(
        req.duration, req.fps, len(req.keyframes), req.clip_frames or DEFAULT_CLIP_FRAMES
    )
    total_steps = len(plans) * req.steps
    sample_rate = _audio_rate(pipe)
    # Whole delivered frames define the duration; audio is cut to exactly the same length.
    indices = retime_indices(req.duration, req.fps)
    duration = len(indices) / req.fps
    needed = model_frames(req.duration, req.fps)
    video: np.ndarray = np.empty((needed, gen_h, gen_w, 3), dtype=np.uint8)
    audio_len = round(duration * sample_rate)
    audio: np.ndarray = np.zeros((2, audio_len), dtype=np.float32)
    audio_filled = 0
    steps_before = 0  # denoising steps of the clips already finished

    def on_step_end(
        pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Report progress over all clips and stop at this step's end if cancelled."""
        done = steps_before + step_index + 1
        if on_step is not None:
            on_step(done, total_steps)
        if on_phase is not None and done == total_steps:
            on_phase("generating_audio")
        # Raising here leaves the pipeline reusable: every call resets its per-call state.
        if should_stop is not None and should_stop():
            raise GenerationCancelled(f"cancelled after step {done} of {total_steps}")
        return callback_kwargs

    # A CPU generator gives the same noise on every machine and GPU model, so a recorded seed
    # reproduces a take anywhere; one generator drawn from in clip order keeps clips distinct.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    elapsed = 0.0
    # After an out-of-memory error the retry decodes in tiles (and offloads on CUDA).
    with exclusive_call(pipe):
        previous_last: np.ndarray | None = None
        for clip_index, plan in enumerate(plans):
            steps_before = clip_index * req.steps
            conditions = []
            if previous_last is not None:
                # Chaining: the last frame of the previous clip is this clip's first frame.
                conditions.append(
                    LTX2VideoCondition(frames=PIL.Image.fromarray(previous_last), index=0)
                )
            for latent, key in plan.keyframes:
                conditions.append(LTX2VideoCondition(frames=req.keyframes[key], index=latent))
            kwargs: dict[str, Any] = {
                "conditions": conditions,
                "prompt": req.prompt,
                "width": gen_w,
                "height": gen_h,
                "num_frames": plan.frames,
                "frame_rate": float(MODEL_FPS),
                "num_inference_steps": req.steps,
                "generator": generator,
                "callback_on_step_end": on_step_end,
                "output_type": "np",
                "return_dict": True,
                "max_sequence_length": max_sequence_length,
                **extra,
            }
            started = time.perf_counter()
            output = pipe(**kwargs)
            elapsed += time.perf_counter() - started

            frames = np.asarray(output.frames[0])  # (F, H, W, 3) floats in [0, 1]
            if frames.shape[1:3] != (gen_h, gen_w):
                raise RuntimeError(
                    f"pipeline returned {frames.shape[2]}x{frames.shape[1]} frames, "
                    f"expected {gen_w}x{gen_h}"
                )
            clip = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            previous_last = clip[-1]
            if on_preview is not None:
                label = f"clip {clip_index + 1} of {len(plans)}"
                on_preview(frame_preview(previous_last, label))
            # Frames after the requested duration (the last clip rounds up to 8k+1) are dropped.
            take = min(len(clip), needed - plan.start)
            if take > 0:
                video[plan.start : plan.start + take] = clip[:take]

            waveform = output.audio[0].detach().float().cpu().numpy()  # (channels, samples)
            if waveform.ndim == 1:
                waveform = waveform[None]
            if waveform.shape[0] == 1:
                waveform = np.repeat(waveform, 2, axis=0)
            offset = round(plan.start / MODEL_FPS * sample_rate)
            audio_filled = _place_audio(audio, waveform[:2], offset, audio_filled)
            del output, frames, clip

    # The LTX-2 soundtrack ends a few ms before the video; the zero-initialized track pads it.
    # A list of views, not video[indices]: retiming to 60 fps would otherwise copy every frame.
    retimed = [video[index] for index in indices]
    if on_phase is not None:
        on_phase("encoding")
    mp4 = encode_mp4(retimed, req.fps, audio, sample_rate, size=(req.width, req.height))
    return VideoResult(
        mp4=mp4,
        width=req.width,
        height=req.height,
        fps=req.fps,
        duration=duration,
        seed=seed,
        audio_sample_rate=delivery_sample_rate(sample_rate),
        video_codec=VIDEO_CODEC,
        audio_codec=AUDIO_CODEC,
        clips=len(plans),
        generation_seconds=elapsed,
    )
