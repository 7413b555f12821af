"""Tiny-model tests of storyboard-to-video generation, MP4 encoding and the tiny video builder."""

from __future__ import annotations

import os

# No test may reach the model hub: the tiny model is built locally and loaded from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import PIL.Image
import pytest

from moviegen_dagster.generation import cli_video
from moviegen_dagster.generation.encode_video import encode_mp4
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.generation.tiny_video import build_tiny_video_model
from moviegen_dagster.generation.video import (
    VideoRequest,
    build_video_prompt,
    default_generation_size,
    generate_video,
    plan_clips,
    retime_indices,
)
from resources.models import ModelPool

SCENE = {
    "scene_description": "Detective enters the dark alley",
    "camera_angle": "wide_shot",
    "lighting": "noir_dramatic",
    "character_positions": ["detective_center"],
    "audio_cues": ["footsteps", "rain_ambience"],
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run this module's tiny models on one thread, then restore the previous setting."""
    import torch

    # The tiny transformer makes thousands of microsecond-sized attention calls; on a shared
    # 2-core box two intra-op threads spin-wait on each other and one step got ~5x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_video_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random-weight LTX-2 pipeline, built once."""
    return build_tiny_video_model(tmp_path_factory.mktemp("models") / "tiny-video")


@pytest.fixture(scope="session")
def tiny_video_pipe(tiny_video_model: Path) -> Any:
    """The tiny video pipeline loaded through the pool, as a worker would."""
    return ModelPool(capacity=1).get_pipeline(
        "video", str(tiny_video_model), None, "float32", "cpu"
    )


def _keyframes(count: int = 2, size: tuple[int, int] = (160, 90)) -> list[PIL.Image.Image]:
    """Deterministic storyboard frames of distinct colours."""
    frames = []
    for index in range(count):
        rng = np.random.default_rng(index)
        base: np.ndarray = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        base[..., index % 3] = 200
        noise = rng.integers(0, 40, size=base.shape, dtype=np.uint8)
        frames.append(PIL.Image.fromarray(base + noise))
    return frames


def _probe(mp4: bytes) -> dict[str, Any]:
    """Decode an MP4 and report its streams, duration, first frame and audio level."""
    assert mp4.find(b"moov") != -1 and mp4.find(b"mdat") != -1
    with av.open(io.BytesIO(mp4)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        info: dict[str, Any] = {
            "video_codec": video.codec_context.name,
            "fps": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "pix_fmt": video.codec_context.pix_fmt,
            "duration": container.duration / av.time_base if container.duration else None,
            "audio_codec": audio.codec_context.name if audio else None,
            "sample_rate": audio.codec_context.sample_rate if audio else None,
            "moov_first": mp4.find(b"moov") < mp4.find(b"mdat"),
        }
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    info["frames"] = frames
    info["frame_count"] = len(frames)
    if audio is not None:
        with av.open(io.BytesIO(mp4)) as container:
            samples = [f.to_ndarray() for f in container.decode(audio=0)]
        pcm = np.concatenate(samples, axis=1)
        info["audio_seconds"] = pcm.shape[1] / info["sample_rate"]
        info["audio_rms"] = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return info


def _request(**overrides: Any) -> VideoRequest:
    """A small, fast request; overrides replace fields."""
    fields: dict[str, Any] = {
        "prompt": build_video_prompt(SCENE),
        "keyframes": _keyframes(2),
        "duration": 1.0,
        "width": 160,
        "height": 90,
        "seed": 7,
        "steps": 2,
    }
    fields.update(overrides)
    return VideoRequest(**fields)


def test_short_video_is_h264_aac_mp4_at_requested_format(tiny_video_pipe: Any) -> None:
    """A 2 s 320x180 request decodes as H.264 + AAC at that size, rate and duration."""
    result = generate_video(tiny_video_pipe, _request(duration=2.0, width=320, height=180, seed=3))
    info = _probe(result.mp4)
    assert info["video_codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["fps"] == 24
    assert info["size"] == (320, 180)
    assert info["frame_count"] == 48
    assert info["audio_codec"] == "aac"
    # LTX-2's vocoder gives 24 kHz; the AAC track is delivered at 48 kHz.
    assert info["sample_rate"] == 48000 == result.audio_sample_rate
    assert info["duration"] == pytest.approx(2.0, abs=0.15)
    assert info["audio_seconds"] == pytest.approx(2.0, abs=0.15)
    # The soundtrack is the model's own output, not padding.
    assert info["audio_rms"] > 1e-4
    assert info["moov_first"]
    assert (result.width, result.height, result.fps, result.seed) == (320, 180, 24, 3)
    assert (result.video_codec, result.audio_codec, result.clips) == ("h264", "aac", 1)
    assert result.duration == pytest.approx(2.0)
    assert result.generation_seconds > 0


def test_full_default_size_1080p_7s_24fps(tiny_video_pipe: Any) -> None:
    """The real default delivery format, 1920x1080 at 24 fps for 7 s, with default steps."""
    started = time.perf_counter()
    result = generate_video(tiny_video_pipe, _request(duration=7.0, width=1920, height=1080))
    elapsed = time.perf_counter() - started
    info = _probe(result.mp4)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["size"] == (1920, 1080)
    assert info["fps"] == 24
    assert info["frame_count"] == 168
    assert info["sample_rate"] == 48000
    assert info["duration"] == pytest.approx(7.0, abs=0.15)
    assert info["moov_first"]
    assert result.clips == 2  # 169 model frames in 121-frame clips
    print(f"1080p 7 s: {elapsed:.1f} s total, {result.generation_seconds:.1f} s in the pipeline")


def test_retimes_to_other_fps_and_odd_durations(tiny_video_pipe: Any) -> None:
    """30 fps delivery of 1.5 s: 45 frames, duration within tolerance, audio follows."""
    result = generate_video(
        tiny_video_pipe, _request(duration=1.5, fps=30, width=128, height=96, steps=1)
    )
    info = _probe(result.mp4)
    assert info["fps"] == 30
    assert info["frame_count"] == 45
    assert info["size"] == (128, 96)
    assert info["duration"] == pytest.approx(1.5, abs=0.15)
    assert info["audio_seconds"] == pytest.approx(1.5, abs=0.15)


def test_same_seed_reproduces_and_other_seed_differs(tiny_video_pipe: Any) -> None:
    """A recorded seed reproduces the frames exactly; another seed changes them."""
    first = _probe(generate_video(tiny_video_pipe, _request(seed=11)).mp4)["frames"]
    again = _probe(generate_video(tiny_video_pipe, _request(seed=11)).mp4)["frames"]
    other = _probe(generate_video(tiny_video_pipe, _request(seed=12)).mp4)["frames"]
    assert np.array_equal(first[0], again[0])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_random_seed_is_drawn_and_returned(tiny_video_pipe: Any) -> None:
    """Without a seed a 31-bit one is drawn and reported."""
    result = generate_video(tiny_video_pipe, _request(seed=None, steps=1))
    assert 0 <= result.seed < 2**31


def test_progress_spans_all_clips_and_ends_at_total(tiny_video_pipe: Any) -> None:
    """Two chained clips of 2 steps report (1, 4) .. (4, 4), in order."""
    calls: list[tuple[int, int]] = []
    result = generate_video(
        tiny_video_pipe,
        _request(clip_frames=17, keyframes=_keyframes(3)),
        on_step=lambda done, total: calls.append((done, total)),
    )
    assert result.clips == 2
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    info = _probe(result.mp4)
    assert info["frame_count"] == 24
    assert info["duration"] == pytest.approx(1.0, abs=0.15)


def test_should_stop_cancels_and_pipe_stays_usable(tiny_video_pipe: Any) -> None:
    """should_stop turning true mid-run raises GenerationCancelled; the next run works."""
    calls: list[int] = []
    with pytest.raises(GenerationCancelled):
        generate_video(
            tiny_video_pipe,
            _request(clip_frames=17),
            on_step=lambda done, total: calls.append(done),
            should_stop=lambda: len(calls) >= 3,
        )
    assert calls == [1, 2, 3]  # stopped in the second clip, at the end of step 3
    after = generate_video(tiny_video_pipe, _request(steps=1))
    assert _probe(after.mp4)["frame_count"] == 24


def test_pipeline_kwargs_pass_guidance_settings(tiny_video_pipe: Any) -> None:
    """Distilled-style guidance settings pass through; managed arguments cannot be overridden."""
    guidance = {"guidance_scale": 1.0, "stg_scale": 0.0, "modality_scale": 1.0}
    result = generate_video(tiny_video_pipe, _request(steps=1), pipeline_kwargs=guidance)
    assert _probe(result.mp4)["frame_count"] == 24
    with pytest.raises(ValueError, match=r"^pipeline_kwargs: num_frames"):
        generate_video(tiny_video_pipe, _request(), pipeline_kwargs={"num_frames": 9})


class _RecordingPipe:
    """A stand-in LTX-2 pipeline: records each call, returns flat clips and constant audio."""

    vae_spatial_compression_ratio = 32
    transformer_spatial_patch_size = 1

    def __init__(self) -> None:
        """Start with no recorded calls."""
        self.calls: list[dict[str, Any]] = []
        self.tokenizer = SimpleNamespace(model_max_length=256)
        self.connectors = SimpleNamespace(
            config=SimpleNamespace(video_connector_num_learnable_registers=128)
        )
        self.vocoder = SimpleNamespace(config=SimpleNamespace(output_sampling_rate=24000))
        self.vae = SimpleNamespace(use_framewise_encoding=True, use_framewise_decoding=True)

    def __call__(self, **kwargs: Any) -> Any:
        """Return call n as grey frames ramping from 0 to n/10, with audio at level n/10."""
        import torch

        self.calls.append(kwargs)
        number = len(self.calls)
        for step in range(kwargs["num_inference_steps"]):
            kwargs["callback_on_step_end"](self, step, None, {})
        count, height, width = kwargs["num_frames"], kwargs["height"], kwargs["width"]
        frames = np.empty((1, count, height, width, 3), dtype=np.float32)
        frames[:] = np.linspace(0.0, 1.0, count, dtype=np.float32)[None, :, None, None, None]
        frames *= number / 10
        # Like LTX-2, the audio is a little (here 24 ms) shorter than the clip.
        samples = round(count / kwargs["frame_rate"] * 24000) - 576
        audio = torch.full((1, 2, samples), 0.1 * number)
        return SimpleNamespace(frames=frames, audio=audio)


def test_clips_chain_on_the_last_frame_and_audio_follows_the_timeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Clip n+1 is conditioned on clip n's last frame; audio lands at each clip's start time."""
    import moviegen_dagster.generation.video as video_module

    captured: dict[str, Any] = {}

    def fake_encode(frames: Any, fps: int, audio: Any, sample_rate: int, **kw: Any) -> bytes:
        """Keep what would be encoded."""
        captured.update(frames=frames, fps=fps, audio=audio, sample_rate=sample_rate, **kw)
        return b"mp4"

    monkeypatch.setattr(video_module, "encode_mp4", fake_encode)
    pipe = _RecordingPipe()
    request = _request(clip_frames=17, keyframes=_keyframes(3), width=320, height=180)
    previews: list[Any] = []
    result = generate_video(pipe, request, gen_width=128, gen_height=64, on_preview=previews.append)
    first, second = pipe.calls
    assert (first["num_frames"], second["num_frames"]) == (17, 9)
    assert (first["width"], first["height"], first["max_sequence_length"]) == (128, 64, 256)
    assert [c.index for c in first["conditions"]] == [0, 2]  # storyboard 0 and 1
    assert first["conditions"][0].frames is request.keyframes[0]
    # Clip 2 opens on clip 1's last frame, then ends on the last storyboard frame.
    chained = np.asarray(second["conditions"][0].frames)
    assert second["conditions"][0].index == 0
    assert np.all(chained == round(255 * 0.1))
    assert [c.index for c in second["conditions"][1:]] == [1]
    assert second["conditions"][1].frames is request.keyframes[2]
    assert pipe.vae.use_framewise_decoding is False
    # 24 delivered frames; frame 16 is the shared frame, taken from clip 2 (grey level 0).
    frames = captured["frames"]
    assert len(frames) == 24 and captured["size"] == (320, 180)
    assert np.all(frames[15] == round(255 * 0.1 * 15 / 16))  # clip 1, frame 15
    assert np.all(frames[16] == 0)  # clip 2, frame 0 (the stand-in ignores its condition)
    assert np.all(frames[23] == round(255 * 0.2 * 7 / 8))  # clip 2, frame 7
    # 1 s of 24 kHz audio: clip 1 from 0 s, clip 2 from 16/24 s, crossfaded where they overlap.
    audio = captured["audio"]
    assert audio.shape == (2, 24000) and captured["sample_rate"] == 24000
    assert np.allclose(audio[:, :16000], 0.1)
    join = audio[0, 16000:16424]  # clip 1's audio ends 576 samples after its 17th frame starts
    assert np.all(np.diff(join) >= 0) and 0.1 <= join[0] < join[-1] <= 0.2
    assert np.allclose(audio[:, 16424:], 0.2)
    assert (result.clips, result.audio_sample_rate, result.mp4) == (2, 48000, b"mp4")
    # One preview per finished clip: a JPEG of its last frame.
    assert [(p.kind, p.label, p.width, p.height) for p in previews] == [
        ("frame", "clip 1 of 2", 128, 64),
        ("frame", "clip 2 of 2", 128, 64),
    ]
    for preview, grey in zip(previews, (round(255 * 0.1), round(255 * 0.2)), strict=True):
        shown = np.asarray(PIL.Image.open(io.BytesIO(preview.data)))
        assert abs(float(shown.mean()) - grey) < 3, (preview.label, shown.mean())


def test_should_stop_before_start_never_runs_the_model() -> None:
    """A task cancelled before it starts raises without touching the pipeline."""

    class Untouchable:
        """A pipeline stand-in that fails if called."""

        def __call__(self, **kwargs: Any) -> Any:
            """Fail: the model must not run."""
            raise AssertionError("the pipeline was called")

    with pytest.raises(GenerationCancelled):
        generate_video(Untouchable(), _request(), should_stop=lambda: True)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"duration": 0.5}, "duration"),
        ({"duration": 30.5}, "duration"),
        ({"duration": float("nan")}, "duration"),
        ({"fps": 0}, "fps"),
        ({"fps": 61}, "fps"),
        ({"fps": 24.0}, "fps"),
        ({"width": 1921}, "width"),
        ({"width": 62}, "width"),
        ({"width": 3842}, "width"),
        ({"height": 2162}, "height"),
        ({"height": 181}, "height"),
        ({"keyframes": []}, "keyframes"),
        ({"keyframes": _keyframes(1) * 17}, "keyframes"),
        ({"keyframes": ["not an image"]}, "keyframes[0]"),
        ({"prompt": " "}, "prompt"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"clip_frames": 20}, "clip_frames"),
        ({"clip_frames": 5}, "clip_frames"),
    ],
)
def test_invalid_requests_fail_before_the_model(overrides: dict[str, Any], field: str) -> None:
    """Each invalid field raises ValueError naming it, without touching the pipeline."""
    with pytest.raises(ValueError, match=r"^" + re.escape(field) + ":"):
        generate_video(object(), _request(**overrides))


def test_generation_size_is_validated_and_defaulted(tiny_video_pipe: Any) -> None:
    """Explicit sizes must be multiples of 32; the tiny default keeps the delivery aspect."""
    with pytest.raises(ValueError, match=r"^gen_width:"):
        generate_video(tiny_video_pipe, _request(), gen_width=100, gen_height=64)
    with pytest.raises(ValueError, match=r"^gen_width:"):
        generate_video(tiny_video_pipe, _request(), gen_width=128)
    assert default_generation_size(tiny_video_pipe, 1920, 1080) == (128, 64)
    assert default_generation_size(tiny_video_pipe, 1080, 1920) == (64, 128)
    assert default_generation_size(tiny_video_pipe, 512, 512) == (128, 128)
    result = generate_video(tiny_video_pipe, _request(steps=1), gen_width=64, gen_height=64)
    assert _probe(result.mp4)["size"] == (160, 90)


def test_build_video_prompt_is_deterministic_and_complete() -> None:
    """All scenario fields reach the prompt in a fixed order; scene_description is required."""
    prompt = build_video_prompt(SCENE)
    assert prompt == build_video_prompt(dict(reversed(list(SCENE.items()))))
    assert prompt == (
        "Detective enters the dark alley. Camera: wide shot. Lighting: noir dramatic. "
        "Character positions: detective center. Audio: footsteps, rain ambience."
    )
    assert build_video_prompt({"scene_description": "  A quiet street. "}) == "A quiet street."
    with pytest.raises(ValueError, match=r"^scene_description:"):
        build_video_prompt({"camera_angle": "wide_shot"})
    with pytest.raises(ValueError, match=r"^audio_cues:"):
        build_video_prompt({"scene_description": "x", "audio_cues": [1]})


def test_clip_plan_chains_clips_and_spreads_keyframes() -> None:
    """Clips are 8k+1 frames, share boundary frames, cover the duration; keyframes span it."""
    plans = plan_clips(7.0, 24, 3, 121)
    assert [(p.start, p.frames) for p in plans] == [(0, 89), (88, 81)]
    assert all((p.frames - 1) % 8 == 0 for p in plans)
    assert plans[-1].start + plans[-1].frames >= 168
    assert plans[0].keyframes[0] == (0, 0)  # first storyboard frame opens the video
    assert plans[-1].keyframes[-1] == ((plans[-1].frames - 1) // 8, 2)  # last one ends it
    single = plan_clips(1.0, 24, 1, 121)
    assert [(p.start, p.frames, p.keyframes) for p in single] == [(0, 25, [(0, 0)])]
    assert retime_indices(1.0, 48).tolist() == [i // 2 for i in range(48)]
    assert retime_indices(1.0, 12).tolist() == list(range(0, 24, 2))


def test_encode_mp4_keeps_44k_audio_and_allows_no_audio() -> None:
    """44.1 kHz audio is kept as is; frames without audio give a video-only MP4."""
    frames = [PIL.Image.new("RGB", (64, 48), (i * 10, 0, 0)) for i in range(12)]
    tone = 0.2 * np.sin(np.linspace(0, 2 * np.pi * 440, 44100, dtype=np.float32))
    info = _probe(encode_mp4(frames, 12, tone, 44100))
    assert (info["size"], info["fps"], info["sample_rate"]) == ((64, 48), 12, 44100)
    assert info["duration"] == pytest.approx(1.0, abs=0.15)
    silent = _probe(encode_mp4(np.zeros((6, 32, 32, 3), dtype=np.uint8), 6, None, 0))
    assert silent["audio_codec"] is None and silent["frame_count"] == 6
    with pytest.raises(ValueError, match=r"^size:"):
        encode_mp4(frames, 12, None, 0, size=(65, 48))


def test_build_is_idempotent_and_cli_reports_it(
    tiny_video_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second build returns at once; the CLI reuses an existing model directory."""
    index = tiny_video_model / "model_index.json"
    before = index.stat().st_mtime_ns
    assert build_tiny_video_model(tiny_video_model) == tiny_video_model
    assert cli_video.main(["build-tiny-video", str(tiny_video_model)]) == 0
    assert index.stat().st_mtime_ns == before
    assert "tiny video model ready" in capsys.readouterr().out
    assert '"LTX2ConditionPipeline"' in index.read_text()
    assert not [p for p in tiny_video_model.parent.iterdir() if p.name.startswith(".")]
