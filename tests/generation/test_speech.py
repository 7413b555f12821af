"""Tiny-model tests of dialogue: voice cloning, pace, emotion, ambience and MP3 output."""

from __future__ import annotations

import os

# No test may reach the model hub: tiny models are built locally and loaded from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import io
import math
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL.Image
import pytest
import torch

from moviegen_dagster.generation import cli_audio
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.generation.speech import (
    AMBIENCE_GAIN_DB,
    CHANNELS,
    EMOTIONS,
    LEAD_IN_SECONDS,
    MP3_BITRATE,
    PACES,
    SPEECH_LEVEL_DBFS,
    TAIL_SECONDS,
    SpeechModel,
    SpeechRequest,
    SpeechResult,
    _fit_ambience,
    _Progress,
    _synthesize,
    _tts_inputs,
    decode_voice,
    generate_speech,
    prepare_text,
    speech_request_from_task,
)
from moviegen_dagster.generation.tiny_audio import (
    TTS_CODEC_SUBFOLDER,
    build_tiny_ambience_model,
    build_tiny_tts_model,
)
from resources.models import ModelPool, PoolKey

# Stable Audio's scheduler draws Brownian-tree noise through torchsde, which warns about float
# rounding at the interval ends; speech.py filters it, but pytest resets filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

# "come here now." is four tokens for the tiny tokenizer: a 42-frame (3.36 s) line.
LINE = "come here now."


# ---------------------------------------------------------------------------------------------
# Fixtures: tiny models built once per session, loaded through the pool like a worker does


@pytest.fixture(scope="session")
def tiny_audio_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Directories of the tiny Pocket TTS and the tiny Stable Audio pipeline."""
    root = tmp_path_factory.mktemp("audio-models")
    return build_tiny_tts_model(root / "tiny-tts"), build_tiny_ambience_model(
        root / "tiny-ambience"
    )


@pytest.fixture(scope="session")
def audio_pool() -> ModelPool:
    """One pool holding both audio models, as on a dialogue worker."""
    return ModelPool(capacity=2)


@pytest.fixture(scope="session")
def tts(tiny_audio_models: tuple[Path, Path], audio_pool: ModelPool) -> SpeechModel:
    """The tiny TTS, loaded by the loader speech.py registers for kind "tts"."""
    model = audio_pool.get_pipeline("tts", str(tiny_audio_models[0]), None, "float32", "cpu")
    assert isinstance(model, SpeechModel)
    return model


@pytest.fixture(scope="session")
def ambience(tiny_audio_models: tuple[Path, Path], audio_pool: ModelPool) -> Any:
    """The tiny ambience pipeline, loaded as kind "ambience"."""
    return audio_pool.get_pipeline("ambience", str(tiny_audio_models[1]), None, "float32", "cpu")


def _wav(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV bytes of (n,) or (n, channels) float samples in [-1, 1]."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def _voice(f0: float, rate: int, seconds: float, brightness: float, syllables: float) -> np.ndarray:
    """A synthetic voice: a harmonic source at f0 with a syllable-rate envelope and pauses."""
    t = np.arange(int(rate * seconds)) / rate
    harmonics = np.zeros_like(t)
    for k in range(1, 12):
        if f0 * k < rate / 2:
            harmonics += np.sin(2 * np.pi * f0 * k * t + k) * brightness ** (k - 1)
    envelope = np.clip(np.sin(2 * np.pi * syllables * t), 0, None) ** 0.5
    return 0.3 * harmonics / np.max(np.abs(harmonics)) * envelope


@pytest.fixture(scope="session")
def voice_low() -> bytes:
    """A low, dark voice profile: 105 Hz, steep harmonic roll-off, 16 kHz mono WAV."""
    return _wav(_voice(105, 16000, 3.0, brightness=0.45, syllables=2.5), 16000)


@pytest.fixture(scope="session")
def voice_high() -> bytes:
    """A high, bright voice profile: 260 Hz, rich harmonics, 44.1 kHz stereo WAV."""
    mono = _voice(260, 44100, 2.5, brightness=0.9, syllables=4.0)
    return _wav(np.stack([mono, 0.8 * mono], axis=1), 44100)


# ---------------------------------------------------------------------------------------------
# Helpers


def _decode(mp3: bytes) -> tuple[np.ndarray, int]:
    """Decode MP3 bytes with PyAV into (channels, n) float32 samples and the sample rate."""
    with av.open(io.BytesIO(mp3)) as container:
        assert container.format.name == "mp3"
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3")
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1).astype(np.float32), stream.rate


def _dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale."""
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12))


def _speech_part(samples: np.ndarray, rate: int) -> np.ndarray:
    """Samples between the silent handles, i.e. the spoken part of a line."""
    return samples[:, round(LEAD_IN_SECONDS * rate) : samples.shape[1] - round(TAIL_SECONDS * rate)]


def _relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||a|| over the common length."""
    n = min(a.shape[-1], b.shape[-1])
    scale = max(float(np.linalg.norm(a[..., :n])), 1e-12)
    return float(np.linalg.norm(a[..., :n] - b[..., :n])) / scale


def _speak(tts: SpeechModel, voice: bytes, ambience: Any = None, **fields: Any) -> SpeechResult:
    """generate_speech with test defaults (a 3 s line, seed 1, 2 ambience steps)."""
    request = SpeechRequest(text=LINE, voice_wav=voice, seed=1, ambience_steps=2)
    return generate_speech(tts, ambience, dataclasses.replace(request, **fields))


@pytest.fixture(scope="session")
def plain_line(tts: SpeechModel, voice_low: bytes) -> SpeechResult:
    """The reference line: low voice, seed 1, neutral, normal pace, no ambience."""
    return _speak(tts, voice_low)


# ---------------------------------------------------------------------------------------------
# Output format


def test_mp3_is_44k_stereo_with_exact_duration(plain_line: SpeechResult, voice_low: bytes) -> None:
    """The MP3 decodes at 44.1 kHz stereo to exactly the reported duration (gapless, ±1 sample)."""
    samples, rate = _decode(plain_line.mp3)
    assert rate == plain_line.sample_rate == 44100
    assert samples.shape[0] == plain_line.channels == CHANNELS == 2
    assert abs(samples.shape[1] / rate - plain_line.duration) <= 1 / rate
    # 42 frames of 80 ms, plus the handles; atempo may round by a few milliseconds.
    assert plain_line.duration == pytest.approx(3.36 + LEAD_IN_SECONDS + TAIL_SECONDS, abs=0.02)
    assert plain_line.bitrate == MP3_BITRATE
    assert len(plain_line.mp3) == pytest.approx(plain_line.duration * MP3_BITRATE / 8, rel=0.1)
    assert plain_line.seed == 1
    assert plain_line.ambience_gain_db is None
    assert plain_line.generation_seconds > 0
    assert len(plain_line.voice) == 12
    # The spoken part sits at the documented reference level; the handles are silent.
    assert _dbfs(_speech_part(samples, rate)) == pytest.approx(SPEECH_LEVEL_DBFS, abs=1.0)
    assert _dbfs(samples[:, : round(0.1 * rate)]) < -60


def test_other_sample_rate(tts: SpeechModel, voice_low: bytes) -> None:
    """sample_rate=24000 gives a 24 kHz MP3 of the same duration."""
    result = _speak(tts, voice_low, sample_rate=24000)
    samples, rate = _decode(result.mp3)
    assert rate == result.sample_rate == 24000
    assert samples.shape[1] == round(result.duration * 24000)
    assert result.duration == pytest.approx(3.36 + LEAD_IN_SECONDS + TAIL_SECONDS, abs=0.02)


# ---------------------------------------------------------------------------------------------
# Voice, seed, pace, emotion


def test_voice_profile_changes_the_voice(
    tts: SpeechModel, plain_line: SpeechResult, voice_high: bytes
) -> None:
    """Another voice profile, same text and seed, gives different speech of the same length."""
    other = _speak(tts, voice_high)
    assert other.voice != plain_line.voice
    low, rate = _decode(plain_line.mp3)
    high, _ = _decode(other.mp3)
    assert low.shape == high.shape  # the text fixes the length; the voice changes the sound
    low, high = _speech_part(low, rate), _speech_part(high, rate)
    assert _relative_distance(low, high) > 0.3
    # Not just a level or phase change: the spectral envelopes differ too.
    spectrum_low = np.log(np.abs(np.fft.rfft(low[0])) + 1e-6)
    spectrum_high = np.log(np.abs(np.fft.rfft(high[0])) + 1e-6)
    assert float(np.mean(np.abs(spectrum_low - spectrum_high))) > 0.2


def test_same_seed_reproduces_and_other_seed_differs(
    tts: SpeechModel, plain_line: SpeechResult, voice_low: bytes
) -> None:
    """A recorded seed reproduces the take byte for byte; another seed changes the speech."""
    assert _speak(tts, voice_low).mp3 == plain_line.mp3
    other = _speak(tts, voice_low, seed=2)
    assert other.seed == 2
    reference, rate = _decode(plain_line.mp3)
    changed, _ = _decode(other.mp3)
    assert _relative_distance(_speech_part(reference, rate), _speech_part(changed, rate)) > 0.3


def test_random_seed_is_drawn_and_returned(tts: SpeechModel, voice_low: bytes) -> None:
    """Without a seed a 31-bit one is drawn, and replaying it gives the same MP3."""
    drawn = _speak(tts, voice_low, seed=None, text="now.")
    assert 0 <= drawn.seed < 2**31
    assert _speak(tts, voice_low, seed=drawn.seed, text="now.").mp3 == drawn.mp3


def test_fast_pace_is_shorter_than_slow(tts: SpeechModel, voice_low: bytes) -> None:
    """pace changes the speaking rate: the spoken part scales by 1/pace (atempo), ±3 %."""
    slow = _speak(tts, voice_low, pace="slow")
    fast = _speak(tts, voice_low, pace="fast")
    numeric = _speak(tts, voice_low, pace=1.6)
    handles = LEAD_IN_SECONDS + TAIL_SECONDS
    spoken = {name: r.duration - handles for name, r in (("slow", slow), ("fast", fast))}
    assert fast.duration < slow.duration
    assert spoken["slow"] / spoken["fast"] == pytest.approx(PACES["fast"] / PACES["slow"], rel=0.03)
    assert (numeric.duration - handles) == pytest.approx(3.36 / 1.6, rel=0.03)


def test_emotion_changes_rate_level_and_pitch(
    tts: SpeechModel, voice_low: bytes, plain_line: SpeechResult
) -> None:
    """ "mysterious" is slower, softer and lower than neutral, by the amounts in EMOTIONS."""
    # A question keeps its punctuation, so only the prosody differs between the two takes.
    neutral = _speak(tts, voice_low, text="are you there?")
    mysterious = _speak(tts, voice_low, text="are you there?", emotion="Mysterious")
    prosody = EMOTIONS["mysterious"]
    handles = LEAD_IN_SECONDS + TAIL_SECONDS
    ratio = (mysterious.duration - handles) / (neutral.duration - handles)
    assert ratio == pytest.approx(1 / prosody.tempo, rel=0.03)

    calm, rate = _decode(neutral.mp3)
    dark, _ = _decode(mysterious.mp3)
    calm, dark = _speech_part(calm, rate), _speech_part(dark, rate)
    assert _dbfs(dark) - _dbfs(calm) == pytest.approx(prosody.gain_db, abs=1.0)

    def centroid(x: np.ndarray) -> float:
        """Spectral centroid in Hz, which a pitch shift scales like the pitch."""
        spectrum = np.abs(np.fft.rfft(x[0]))
        freqs = np.fft.rfftfreq(x.shape[1], 1 / rate)
        return float(np.sum(freqs * spectrum) / np.sum(spectrum))

    assert centroid(dark) / centroid(calm) == pytest.approx(2 ** (prosody.semitones / 12), rel=0.03)


def test_emotion_punctuation_cue() -> None:
    """Emotions with an ending cue replace a plain full stop; questions are left alone."""
    assert prepare_text("  I have been  expecting you. ", EMOTIONS["mysterious"]) == (
        "I have been expecting you..."
    )
    assert prepare_text("Run", EMOTIONS["excited"]) == "Run!"
    assert prepare_text("Who is there?", EMOTIONS["excited"]) == "Who is there?"
    assert prepare_text("Fine.", EMOTIONS["neutral"]) == "Fine."


def test_long_text_is_split_and_the_voice_encoded_once(tts: SpeechModel, voice_low: bytes) -> None:
    """Text over the processor's 50-token chunks is split at sentence ends; one voice encoding."""
    voice = decode_voice(voice_low, tts.sample_rate)
    text = " ".join(["come here now."] * 13)  # 52 tokens
    prepared = _tts_inputs(tts, text, voice)
    assert len(prepared) == 2
    first, second = (inputs["audio_prompt_latents"] for inputs, _ in prepared)
    assert torch.equal(first, second)
    assert [frames for _, frames in prepared] == [225, 42]  # ceil((tokens / 3 + 2) * 12.5)


def test_chunks_are_generated_in_order_and_joined(tts: SpeechModel, voice_low: bytes) -> None:
    """Several chunks give one waveform: each chunk's frames, in order, under one seed."""
    voice = decode_voice(voice_low, tts.sample_rate)
    one = _tts_inputs(tts, "now.", voice)
    two = _tts_inputs(tts, "come here now.", voice)
    calls: list[tuple[int, int]] = []
    progress = _Progress(one[0][1] + two[0][1], lambda s, t: calls.append((s, t)), None)
    joined = _synthesize(tts, one + two, 4, progress)
    frame_size = tts.processor.audio_tokenizer.config.frame_size
    assert len(joined) == (one[0][1] + two[0][1]) * frame_size
    assert calls[-1] == (progress.total, progress.total)
    alone = _synthesize(tts, one, 4, _Progress(one[0][1], None, None))
    assert np.array_equal(joined[: len(alone)], alone)  # the first chunk is the same take


# ---------------------------------------------------------------------------------------------
# Ambience, progress and cancellation


def test_background_noise_is_mixed_under_the_speech(
    tts: SpeechModel, ambience: Any, voice_low: bytes, plain_line: SpeechResult
) -> None:
    """rain_ambience fills the gaps and sits AMBIENCE_GAIN_DB under the speech (±1.5 dB)."""
    calls: list[tuple[int, int]] = []
    previews: list[Any] = []
    mixed = generate_speech(
        tts,
        ambience,
        SpeechRequest(
            text=LINE,
            voice_wav=voice_low,
            seed=1,
            ambience_steps=2,
            background_noise="rain_ambience",
        ),
        on_step=lambda step, total: calls.append((step, total)),
        on_preview=previews.append,
    )
    assert [p.label for p in previews] == ["voice", "voice with ambience"]
    assert mixed.ambience_gain_db == AMBIENCE_GAIN_DB == -18.0
    assert mixed.duration == plain_line.duration  # the bed is cut to the speech's length
    speech, rate = _decode(plain_line.mp3)
    mix, _ = _decode(mixed.mp3)
    assert mix.shape == speech.shape

    # MP3 coding noise of a noise-like tiny voice is close to the bed's level, so the bed is
    # measured where the speech is silent: in the handles, clear of the 20 ms edge fades.
    edge, lead = round(0.03 * rate), round(LEAD_IN_SECONDS * rate)
    tail = round(TAIL_SECONDS * rate)

    def gaps(x: np.ndarray) -> np.ndarray:
        """The lead-in and tail handles of a line."""
        return np.concatenate([x[:, edge:lead], x[:, x.shape[1] - tail : x.shape[1] - edge]], 1)

    assert _dbfs(gaps(speech)) < -60
    assert _dbfs(gaps(mix)) > _dbfs(gaps(speech)) + 20
    bed_level = _dbfs(gaps(mix))
    assert bed_level == pytest.approx(SPEECH_LEVEL_DBFS + AMBIENCE_GAIN_DB, abs=1.5)
    assert bed_level - _dbfs(_speech_part(speech, rate)) == pytest.approx(AMBIENCE_GAIN_DB, abs=1.5)

    # Progress covers the TTS frames and then the 2 ambience steps, never going backwards.
    steps = [step for step, _ in calls]
    assert steps == sorted(steps)
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    assert total == 42 + 2
    assert any(step > 42 for step in steps[:-1])


def test_voice_preview_is_its_waveform(tts: SpeechModel, voice_low: bytes) -> None:
    """Without ambience the one preview is the voice's envelope: a PNG, silent lead-in flat."""
    previews: list[Any] = []
    generate_speech(
        tts, None, SpeechRequest(text=LINE, voice_wav=voice_low, seed=1), on_preview=previews.append
    )
    [preview] = previews
    assert (preview.kind, preview.label, preview.media_type) == ("waveform", "voice", "image/png")
    image = np.asarray(PIL.Image.open(io.BytesIO(preview.data)).convert("RGB"))
    assert image.shape == (preview.height, preview.width, 3) == (96, 480, 3)
    drawn = (image != image[0, 0]).any(axis=2)  # pixels that differ from the background
    heights = drawn.sum(axis=0)
    assert heights[:2].max() <= 2  # the lead-in silence is the centre line only
    assert heights.max() > 40  # the speech reaches well beyond it (normalised to the peak)


def test_ambience_is_looped_to_any_length() -> None:
    """A bed shorter than the line is looped with a crossfade to exactly the line's length."""
    rate = 1000
    bed: np.ndarray = np.ones((2, 1500), np.float32)
    longer = _fit_ambience(bed, 4000, rate)
    assert longer.shape == (2, 4000)
    assert float(np.min(longer)) > 0.7  # equal-power crossfade: no dip to silence
    assert _fit_ambience(bed, 700, rate).shape == (2, 700)


def test_should_stop_cancels_and_models_stay_usable(
    tts: SpeechModel, ambience: Any, voice_low: bytes, plain_line: SpeechResult
) -> None:
    """should_stop stops the TTS or the ambience at the next step; the models stay usable."""
    with pytest.raises(GenerationCancelled, match="before generation started"):
        generate_speech(
            tts, None, SpeechRequest(text=LINE, voice_wav=voice_low), should_stop=lambda: True
        )

    polls: list[int] = []

    def stop_during_tts() -> bool:
        """False before generation starts, True when polled at the first frame."""
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(GenerationCancelled, match="cancelled after 1 of"):
        generate_speech(
            tts,
            None,
            SpeechRequest(text=LINE, voice_wav=voice_low, seed=1),
            should_stop=stop_during_tts,
        )

    state = {"ambience": False}

    def on_step(step: int, total: int) -> None:
        """Note when progress moves past the TTS frames into the ambience steps."""
        state["ambience"] = step > total - 2

    # 42 TTS frames, then the first of 2 ambience steps reports 43 of 44 and is stopped there.
    with pytest.raises(GenerationCancelled, match="cancelled after 43 of 44"):
        generate_speech(
            tts,
            ambience,
            SpeechRequest(
                text=LINE, voice_wav=voice_low, seed=1, ambience_steps=2, background_noise="rain"
            ),
            on_step=on_step,
            should_stop=lambda: state["ambience"],
        )
    assert not tts.model._forward_pre_hooks  # the progress hook is always removed
    assert _speak(tts, voice_low).mp3 == plain_line.mp3


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"this is not audio at all",
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64),
        b"ID3\x04" + bytes(500),
    ],
    ids=["empty", "text", "png", "broken-riff", "mp3-header"],
)
def test_non_audio_voice_profile_is_rejected(tts: SpeechModel, payload: bytes) -> None:
    """Bytes that are not a decodable WAV raise ValueError naming character_voice_profile."""
    with pytest.raises(ValueError, match="character_voice_profile"):
        generate_speech(tts, None, SpeechRequest(text=LINE, voice_wav=payload))


def test_silent_or_short_voice_profile_is_rejected() -> None:
    """A silent or sub-half-second recording cannot carry a voice."""
    with pytest.raises(ValueError, match="character_voice_profile: the recording is silent"):
        decode_voice(_wav(np.zeros(24000), 24000), 24000)
    with pytest.raises(ValueError, match="character_voice_profile: at least"):
        decode_voice(_wav(_voice(150, 24000, 0.2, 0.5, 3), 24000), 24000)


def test_long_voice_profile_is_cut_to_30_seconds() -> None:
    """Only the first 30 s of a long profile are decoded, resampled to the TTS rate."""
    voice = decode_voice(_wav(_voice(150, 8000, 40.0, 0.5, 3), 8000), 24000)
    assert voice.dtype == np.float32
    assert len(voice) == 30 * 24000


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "a" * 2001}, "text"),
        ({"pace": "sprint"}, "pace"),
        ({"pace": 3.0}, "pace"),
        ({"pace": True}, "pace"),
        ({"emotion": "bored-ish"}, "emotion"),
        ({"seed": -1}, "seed"),
        ({"sample_rate": 44000}, "sample_rate"),
        ({"ambience_steps": 0}, "ambience_steps"),
        ({"background_noise": 5}, "background_noise"),
        ({"background_noise": "rain"}, "background_noise"),  # no ambience model passed
    ],
)
def test_invalid_fields_are_rejected_before_any_model_runs(
    voice_low: bytes, fields: dict[str, Any], field: str
) -> None:
    """Each invalid field raises ValueError naming it; the (absent) models are never touched."""
    request = dataclasses.replace(SpeechRequest(text=LINE, voice_wav=voice_low), **fields)
    with pytest.raises(ValueError, match=f"^{field}:"):
        generate_speech(object(), None, request)  # type: ignore[arg-type]


def test_request_from_task_data(voice_low: bytes) -> None:
    """The quickstart's process_audio task data maps onto a SpeechRequest."""
    request = speech_request_from_task(
        {
            "text": "I have been expecting you, detective.",
            "character_voice_profile": "https://example.com/detective_voice.wav",
            "emotion": "mysterious",
            "pace": "normal",
            "background_noise": "rain_ambience",
        },
        voice_low,
    )
    assert (request.emotion, request.pace, request.background_noise) == (
        "mysterious",
        "normal",
        "rain_ambience",
    )
    with pytest.raises(ValueError, match=r"^text:"):
        speech_request_from_task({"text": None}, voice_low)


# ---------------------------------------------------------------------------------------------
# Builders, loader and command line


def test_builders_are_idempotent_and_loader_attaches_the_codec(
    tiny_audio_models: tuple[Path, Path], tts: SpeechModel, audio_pool: ModelPool
) -> None:
    """Rebuilding leaves the directories alone; the pool loaded the TTS once with its codec."""
    tts_dir, ambience_dir = tiny_audio_models
    before = {path: path.stat().st_mtime_ns for path in tts_dir.rglob("*")}
    assert build_tiny_tts_model(tts_dir) == tts_dir
    assert build_tiny_ambience_model(ambience_dir) == ambience_dir
    assert {path: path.stat().st_mtime_ns for path in tts_dir.rglob("*")} == before
    assert (tts_dir / TTS_CODEC_SUBFOLDER / "config.json").exists()
    assert not list(tts_dir.parent.glob(".tiny-tts-*"))  # no staging directory left behind
    assert tts.processor.audio_tokenizer is not None
    assert tts.sample_rate == 24000
    key = PoolKey("tts", str(tts_dir), None, "float32", "cpu")
    assert key in audio_pool
    assert audio_pool.load_count(key) == 1


def test_cli_builds_the_tiny_ambience_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`build-tiny-ambience DIR` builds a loadable pipeline directory, idempotently."""
    target = tmp_path / "amb"
    assert cli_audio.main(["build-tiny-ambience", str(target)]) == 0
    assert (target / "model_index.json").exists()
    assert "ready at" in capsys.readouterr().out
    assert cli_audio.main(["build-tiny-ambience", str(target)]) == 0
