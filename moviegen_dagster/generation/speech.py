"""Dialogue generation: voice-cloned speech, pace and emotion prosody, ambience bed, MP3 encoding.

Pipeline of one line:
1. Validate the request and decode the character's voice profile WAV (before any model runs).
2. Pocket TTS clones the voice zero-shot from that WAV (24 kHz mono), seeded.
3. Prosody: one FFmpeg filter graph (through PyAV) shifts the pitch (`asetrate` + `aresample`),
   resamples to the delivery rate and changes the speaking rate without changing the pitch
   (`atempo`, a WSOLA time stretch). Pocket TTS has no rate or emotion control, so pace and
   emotion act here, plus the emotion's level and a punctuation cue the model does follow.
4. The speech is levelled to SPEECH_LEVEL_DBFS (RMS of the spoken part), the emotion's gain is
   applied, and short silent handles (LEAD_IN_SECONDS, TAIL_SECONDS) are added.
5. Optional ambience: Stable Audio renders the `background_noise` bed, which is mixed under the
   speech at AMBIENCE_GAIN_DB relative to SPEECH_LEVEL_DBFS, over the whole clip.
6. Stereo MP3 through libmp3lame (gapless: decodes to exactly the samples encoded).
"""

from __future__ import annotations

import hashlib
import io
import math
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.filter
import numpy as np

from moviegen_dagster.generation.common import exclusive_call, words
from moviegen_dagster.generation.errors import GenerationCancelled
from moviegen_dagster.generation.tiny_audio import TTS_CODEC_SUBFOLDER
from moviegen_dagster.previews import Preview, waveform_preview
from resources.models import PoolKey, register_loader

# Limits checked before any model is touched; the API may be stricter, never looser.
MAX_TEXT_CHARS = 2000
MAX_VOICE_BYTES = 64 * 1024 * 1024
MAX_VOICE_SECONDS = 30.0  # longer profiles are cut: a few seconds carry the voice
MIN_VOICE_SECONDS = 0.5
MAX_SEED = 2**63 - 1
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # rates MP3 (MPEG-1/2) can carry
MAX_AMBIENCE_STEPS = 200
MAX_BACKGROUND_CHARS = 200

# Delivery format: stereo (a centred voice over a stereo ambience bed) MP3 at 128 kb/s.
CHANNELS = 2
MP3_BITRATE = 128_000

# Levels. Speech is levelled so every line of a scene sits at the same loudness; the ambience
# bed is set relative to that reference level, not to the emotion-adjusted voice, so the bed
# stays constant across a scene while a whisper gets quieter over it.
SPEECH_LEVEL_DBFS = -20.0  # RMS of the spoken part, before the emotion's gain
AMBIENCE_GAIN_DB = -18.0  # ambience RMS relative to SPEECH_LEVEL_DBFS (-38 dBFS)
PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS; the whole clip is scaled down if it would exceed it
LEAD_IN_SECONDS = 0.15  # silent handles around the line, filled by the ambience when present
TAIL_SECONDS = 0.35
AMBIENCE_FADE_SECONDS = 0.02  # clip-edge fades against clicks
AMBIENCE_CROSSFADE_SECONDS = 0.5  # when a line outlasts one ambience render, loop it
AMBIENCE_NEGATIVE_PROMPT = "speech, voices, talking, singing, music, low quality"
DEFAULT_AMBIENCE_STEPS = 50

# Pace presets (speaking-rate factors, >1 is faster); numbers in [MIN_PACE, MAX_PACE] also work.
PACES = {"slow": 0.85, "normal": 1.0, "fast": 1.2}
MIN_PACE = 0.5
MAX_PACE = 2.0

# How often (seconds) TTS frame progress is reported and cancellation polled: frames take
# milliseconds, and should_stop may query the run status.
_POLL_SECONDS = 0.1

# Stable Audio's scheduler samples Brownian-tree noise through torchsde, which warns about
# float rounding at the interval ends on every call; the warning carries nothing actionable.
warnings.filterwarnings("ignore", message=r"Should have t[ab]", module=r"torchsde\.")


@dataclass(frozen=True)
class Prosody:
    """How an emotion changes the delivery of a cloned voice."""

    tempo: float  # speaking-rate factor, multiplied with the pace
    semitones: float  # pitch shift
    gain_db: float  # level relative to SPEECH_LEVEL_DBFS
    ending: str | None = None  # final punctuation cue for the TTS ("!", "..."), None keeps it


# Pocket TTS has no emotion control; these are prosody settings in the ranges acted speech moves
# in (rate ±15 %, pitch ±2 semitones, level ±5 dB, whispers ~-10 dB), plus the sentence-final
# punctuation the model was trained to read.
EMOTIONS: dict[str, Prosody] = {
    "neutral": Prosody(1.0, 0.0, 0.0),
    "calm": Prosody(0.95, -0.5, -2.0),
    "serious": Prosody(0.95, -1.0, 0.0, "."),
    "happy": Prosody(1.06, 1.0, 1.0, "!"),
    "excited": Prosody(1.12, 2.0, 3.0, "!"),
    "angry": Prosody(1.05, 0.5, 4.0, "!"),
    "sad": Prosody(0.88, -1.5, -4.0, "..."),
    "fearful": Prosody(1.1, 1.5, -2.0, "..."),
    "mysterious": Prosody(0.88, -2.0, -5.0, "..."),
    "whisper": Prosody(0.95, 0.0, -10.0),
}
EMOTION_ALIASES = {
    "scared": "fearful",
    "afraid": "fearful",
    "joyful": "happy",
    "cheerful": "happy",
    "furious": "angry",
    "whispering": "whisper",
    "ominous": "mysterious",
}


@dataclass
class SpeechRequest:
    """One dialogue line, already resolved from the task's data."""

    text: str
    voice_wav: bytes  # the character_voice_profile WAV, fetched by the caller
    emotion: str | None = None
    pace: str | float = "normal"  # "slow" | "normal" | "fast" or a factor in 0.5-2.0
    background_noise: str | None = None  # e.g. "rain_ambience"; None/"" /"none": no ambience
    seed: int | None = None  # None -> a random 31-bit seed is drawn and returned
    sample_rate: int = 44100
    ambience_steps: int = DEFAULT_AMBIENCE_STEPS


@dataclass
class SpeechResult:
    """The encoded line and what is needed to reproduce it."""

    mp3: bytes
    duration: float  # exact: samples / sample_rate
    sample_rate: int
    channels: int
    bitrate: int
    seed: int
    voice: str  # short hash of the voice profile WAV
    generation_seconds: float
    ambience_gain_db: float | None  # relative to the speech reference level; None: no ambience


@dataclass
class SpeechModel:
    """A loaded Pocket TTS: the model and its processor (tokenizer, features, codec)."""

    model: Any
    processor: Any

    @property
    def sample_rate(self) -> int:
        """Rate of the voice prompt and of the generated speech (24 kHz for Pocket TTS)."""
        return int(self.processor.feature_extractor.sampling_rate)


# ---------------------------------------------------------------------------------------------
# Input validation


def resolve_pace(pace: Any) -> float:
    """Speaking-rate factor of a pace preset name or number; ValueError naming `pace`."""
    if isinstance(pace, str):
        name = pace.strip().lower()
        if name in PACES:
            return PACES[name]
        try:
            pace = float(name)
        except ValueError:
            raise ValueError(
                f"pace: must be one of {', '.join(PACES)} or a number between {MIN_PACE} and "
                f"{MAX_PACE}, got {pace!r}"
            ) from None
    if isinstance(pace, bool) or not isinstance(pace, int | float) or not math.isfinite(pace):
        raise ValueError(f"pace: must be a preset name or a number, got {pace!r}")
    if not MIN_PACE <= pace <= MAX_PACE:
        raise ValueError(f"pace: must be between {MIN_PACE} and {MAX_PACE}, got {pace}")
    return float(pace)


def resolve_emotion(emotion: str | None) -> Prosody:
    """Prosody of an emotion name (None: neutral); ValueError naming `emotion`."""
    if emotion is None:
        return EMOTIONS["neutral"]
    if not isinstance(emotion, str):
        raise ValueError(f"emotion: must be a string, got {emotion!r}")
    name = "_".join(words(emotion).lower().split())
    if not name:
        return EMOTIONS["neutral"]
    name = EMOTION_ALIASES.get(name, name)
    if name not in EMOTIONS:
        known = ", ".join([*EMOTIONS, *EMOTION_ALIASES])
        raise ValueError(f"emotion: must be one of {known}, got {emotion!r}")
    return EMOTIONS[name]


def ambience_prompt(background_noise: str | None) -> str | None:
    """Stable Audio prompt for a background_noise value; None when no ambience is wanted."""
    if background_noise is None:
        return None
    if not isinstance(background_noise, str):
        raise ValueError(f"background_noise: must be a string, got {background_noise!r}")
    phrase = words(background_noise)
    if not phrase or phrase.lower() == "none":
        return None
    if len(phrase) > MAX_BACKGROUND_CHARS:
        raise ValueError(f"background_noise: at most {MAX_BACKGROUND_CHARS} characters")
    return f"{phrase}, continuous ambient background sound, no speech"


def prepare_text(text: str, prosody: Prosody) -> str:
    """Collapse whitespace and apply the emotion's final punctuation cue."""
    line = " ".join(text.split())
    if prosody.ending is None or line.endswith(("?", "!", "...", "…")):
        # A question, an exclamation or a trailing ellipsis is the writer's choice: keep it.
        return line
    return (line[:-1] if line.endswith(".") else line) + prosody.ending


def validate_request(req: SpeechRequest) -> None:
    """Raise ValueError naming the first invalid field of req (the voice WAV is checked apart)."""
    if not isinstance(req.text, str) or not req.text.strip():
        raise ValueError("text: a non-empty string is required")
    if len(req.text) > MAX_TEXT_CHARS:
        raise ValueError(f"text: at most {MAX_TEXT_CHARS} characters, got {len(req.text)}")
    resolve_emotion(req.emotion)
    resolve_pace(req.pace)
    ambience_prompt(req.background_noise)
    if req.seed is not None and (
        isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED
    ):
        raise ValueError(f"seed: must be an integer between 0 and {MAX_SEED}, got {req.seed!r}")
    if req.sample_rate not in SAMPLE_RATES:
        rates = ", ".join(map(str, SAMPLE_RATES))
        raise ValueError(f"sample_rate: must be one of {rates}, got {req.sample_rate!r}")
    steps = req.ambience_steps
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not 1 <= steps <= MAX_AMBIENCE_STEPS
    ):
        raise ValueError(
            f"ambience_steps: must be between 1 and {MAX_AMBIENCE_STEPS}, got {steps!r}"
        )


def speech_request_from_task(task_data: dict[str, Any], voice_wav: bytes) -> SpeechRequest:
    """SpeechRequest from a process_audio task's data and the fetched voice profile bytes."""
    pace = task_data.get("pace")
    request = SpeechRequest(
        text=task_data.get("text"),  # type: ignore[arg-type]  # validated below
        voice_wav=voice_wav,
        emotion=task_data.get("emotion"),
        pace="normal" if pace is None else pace,
        background_noise=task_data.get("background_noise"),
        seed=task_data.get("seed"),
    )
    validate_request(request)
    return request


def voice_id(voice_wav: bytes) -> str:
    """Short stable identifier of a voice profile: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(bytes(voice_wav)).hexdigest()[:12]


def decode_voice(voice_wav: bytes, sample_rate: int) -> np.ndarray:
    """Decode a voice profile WAV to mono float32 at sample_rate, at most MAX_VOICE_SECONDS."""
    field = "character_voice_profile"
    if not isinstance(voice_wav, bytes | bytearray | memoryview) or not voice_wav:
        raise ValueError(f"{field}: a non-empty WAV file is required")
    data = bytes(voice_wav)
    if len(data) > MAX_VOICE_BYTES:
        raise ValueError(f"{field}: at most {MAX_VOICE_BYTES // 2**20} MiB, got {len(data)} bytes")
    # Check the RIFF/WAVE header ourselves and force FFmpeg's wav demuxer: arbitrary bytes never
    # reach format probing, so only the WAV parser and PCM decoders see untrusted input.
    if data[:4] not in (b"RIFF", b"RF64", b"BW64") or data[8:12] != b"WAVE":
        raise ValueError(f"{field}: not a WAV file (no RIFF/WAVE header)")
    limit = int(MAX_VOICE_SECONDS * sample_rate)
    chunks: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format="wav") as container:
            streams = container.streams.audio
            if not streams:
                raise ValueError(f"{field}: the WAV file has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    decoded += out.samples
                if decoded >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise ValueError(f"{field}: cannot decode the WAV file ({exc})") from exc
    if not chunks:
        raise ValueError(f"{field}: the WAV file holds no audio")
    voice = np.concatenate(chunks)[:limit].astype(np.float32)
    voice = np.clip(np.nan_to_num(voice, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    if len(voice) < MIN_VOICE_SECONDS * sample_rate:
        seconds = len(voice) / sample_rate
        raise ValueError(f"{field}: at least {MIN_VOICE_SECONDS} s of audio, got {seconds:.2f} s")
    if _rms(voice) < 1e-4:
        raise ValueError(f"{field}: the recording is silent")
    return voice


# ---------------------------------------------------------------------------------------------
# Signal processing


def _rms(x: np.ndarray) -> float:
    """Root mean square of all samples."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _db_to_gain(db: float) -> float:
    """Amplitude factor of a level change in dB."""
    return float(10 ** (db / 20))


def _atempo_chain(factor: float) -> list[tuple[str, str]]:
    """atempo filters multiplying to factor, each within the 0.5-2.0 range it handles best."""
    chain: list[tuple[str, str]] = []
    while factor < 0.5:
        chain.append(("atempo", "0.5"))
        factor /= 0.5
    while factor > 2.0:
        chain.append(("atempo", "2.0"))
        factor /= 2.0
    if abs(factor - 1.0) > 1e-6:
        chain.append(("atempo", f"{factor:.6f}"))
    return chain


def run_filter_graph(
    samples: np.ndarray, in_rate: int, chain: list[tuple[str, str]], out_rate: int
) -> np.ndarray:
    """Run mono float32 samples through an FFmpeg audio filter chain; returns out_rate samples."""
    graph = av.filter.Graph()
    source = graph.add_abuffer(
        format="flt", sample_rate=in_rate, layout="mono", time_base=Fraction(1, in_rate)
    )
    nodes = [source, *(graph.add(name, args) for name, args in chain)]
    nodes.append(
        graph.add("aformat", f"sample_fmts=flt:sample_rates={out_rate}:channel_layouts=mono")
    )
    sink = graph.add("abuffersink")
    graph.link_nodes(*nodes, sink).configure()

    out: list[np.ndarray] = []

    def drain() -> None:
        """Collect every frame the graph has ready."""
        while True:
            try:
                frame = sink.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            out.append(frame.to_ndarray().reshape(-1))

    samples = np.ascontiguousarray(samples, dtype=np.float32)
    block = 8192
    for start in range(0, len(samples), block):
        frame = av.AudioFrame.from_ndarray(
            samples[None, start : start + block], format="flt", layout="mono"
        )
        frame.sample_rate = in_rate
        frame.pts = start
        frame.time_base = Fraction(1, in_rate)
        source.push(frame)
        drain()
    source.push(None)
    drain()
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def apply_prosody(
    speech: np.ndarray, in_rate: int, out_rate: int, tempo: float, semitones: float
) -> np.ndarray:
    """Shift the pitch, resample to out_rate and change the rate by tempo, keeping the pitch."""
    # asetrate plays the samples k times faster (pitch and speed x k); aresample brings them to
    # the delivery rate; atempo (WSOLA, pitch-preserving) then stretches by tempo / k, leaving
    # the duration divided by tempo and the pitch multiplied by k.
    pitch = 2 ** (semitones / 12)
    chain: list[tuple[str, str]] = []
    if abs(pitch - 1.0) > 1e-6:
        chain.append(("asetrate", str(round(in_rate * pitch))))
    chain.append(("aresample", str(out_rate)))
    chain += _atempo_chain(tempo / pitch)
    return run_filter_graph(speech, in_rate, chain, out_rate)


def _fit_ambience(ambience: np.ndarray, length: int, rate: int) -> np.ndarray:
    """Trim, or loop with an equal-power crossfade, a (channels, n) bed to length samples."""
    if ambience.shape[1] >= length:
        return ambience[:, :length]
    fade = min(int(AMBIENCE_CROSSFADE_SECONDS * rate), ambience.shape[1] // 2)
    if fade < 1:
        return np.resize(ambience, (ambience.shape[0], length))
    out = ambience
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    fade_in, fade_out = np.sqrt(ramp), np.sqrt(1.0 - ramp)
    while out.shape[1] < length:
        joined = out[:, -fade:] * fade_out + ambience[:, :fade] * fade_in
        out = np.concatenate([out[:, :-fade], joined, ambience[:, fade:]], axis=1)
    return out[:, :length]


def encode_mp3(samples: np.ndarray, sample_rate: int, bitrate: int = MP3_BITRATE) -> bytes:
    """Encode (channels, n) float32 samples as a gapless MP3 through libmp3lame."""
    channels = samples.shape[0]
    layout = "stereo" if channels == 2 else "mono"
    planar = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout=layout)
        stream.bit_rate = bitrate
        block = 1152  # one MP3 frame
        for start in range(0, planar.shape[1], block):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + block]), format="fltp", layout=layout
            )
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Models


# Pocket TTS draws its flow noise from torch's global generator (generate takes no generator),
# so seeding it is process-wide: one lock serializes every seeded TTS run in the process.
_tts_lock = threading.Lock()


def load_tts_model(key: PoolKey) -> SpeechModel:
    """Pool loader for kind "tts": a Pocket TTS checkpoint and its processor, on key.device."""
    import torch
    from transformers import (
        AutoProcessor,
        PocketTTSAudioTokenizerModel,
        PocketTTSForConditionalGeneration,
    )

    revision = {"revision": key.revision} if key.revision is not None else {}
    # A hub checkpoint's processor names its codec repository and loads it here; the tiny model
    # keeps the codec in a subfolder instead (see tiny_audio.TTS_CODEC_SUBFOLDER).
    processor: Any = AutoProcessor.from_pretrained(key.model, **revision)
    if getattr(processor, "audio_tokenizer", None) is None:
        processor.audio_tokenizer = PocketTTSAudioTokenizerModel.from_pretrained(
            key.model, subfolder=TTS_CODEC_SUBFOLDER, **revision
        )
    # The codec stays float32: it is small, and it encodes the voice and decodes the waveform.
    processor.audio_tokenizer.to(device=key.device, dtype=torch.float32).eval()
    model: Any = PocketTTSForConditionalGeneration.from_pretrained(
        key.model, dtype=getattr(torch, key.dtype), **revision
    )
    model.to(key.device).eval()
    return SpeechModel(model=model, processor=processor)


register_loader("tts", load_tts_model)


class _Progress:
    """Monotonic progress over TTS frames and ambience steps, with cooperative cancellation."""

    def __init__(
        self,
        total: int,
        on_step: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        """Track progress towards total units."""
        self.total = max(total, 1)
        self.done = 0
        self._on_step = on_step
        self._should_stop = should_stop
        self._reported = -1
        self._last_poll = -math.inf

    def check(self) -> None:
        """Raise GenerationCancelled if the task was cancelled."""
        if self._should_stop is not None and self._should_stop():
            raise GenerationCancelled(f"cancelled after {self.done} of {self.total} steps")

    def advance_to(self, done: int, force: bool = True) -> None:
        """Move to `done` units (never backwards), report it and poll cancellation."""
        self.done = min(max(done, self.done), self.total)
        now = time.monotonic()
        if not force and now - self._last_poll < _POLL_SECONDS:
            return
        self._last_poll = now
        if self._on_step is not None and self.done != self._reported:
            self._reported = self.done
            self._on_step(self.done, self.total)
        self.check()


def _tts_inputs(tts: SpeechModel, text: str, voice: np.ndarray) -> list[tuple[Any, int]]:
    """Processor inputs and frame budget of each sentence-aligned chunk of text."""
    import torch

    processor, model = tts.processor, tts.model
    chunks = [chunk for chunk in processor.split_text(text) if chunk.strip()] or [text]
    placeholder_ids = torch.tensor(model._placeholder_token_ids())
    prepared: list[tuple[Any, int]] = []
    voice_latents = None
    for chunk in chunks:
        content = [{"type": "audio", "audio": voice}, {"type": "text", "text": chunk}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}])
        if voice_latents is None:
            inputs = processor(
                text=prompt, audio=[voice], sampling_rate=tts.sample_rate, return_tensors="pt"
            )
            # Encode the voice once; later chunks reuse its latents.
            mask = inputs["audio_prompt_latents_mask"][0].bool()
            voice_latents = inputs["audio_prompt_latents"][0][mask]
        else:
            inputs = processor(
                text=prompt, audio_prompt_latents=[voice_latents], return_tensors="pt"
            )
        # The model's own default budget, made explicit so progress knows the total up front.
        ids = inputs["input_ids"]
        num_text = int((~torch.isin(ids, placeholder_ids) & inputs["attention_mask"].bool()).sum())
        frames = math.ceil((num_text / 3 + 2) * model.config.frame_rate)
        prepared.append((inputs, frames))
    return prepared


def _synthesize(
    tts: SpeechModel, prepared: list[tuple[Any, int]], seed: int, progress: _Progress
) -> np.ndarray:
    """Generate every chunk with one seed and concatenate the waveforms (mono, tts rate)."""
    import torch

    model = tts.model
    device = model.device
    offset = 0
    budget = 0
    frame = 0

    def on_forward(module: Any, args: Any, kwargs: Any) -> None:
        """Each forward of the backbone produces one latent frame: report it, poll cancel."""
        nonlocal frame
        frame += 1
        progress.advance_to(offset + min(frame, budget), force=frame == 1)

    waves: list[np.ndarray] = []
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        with _tts_lock, torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():
            torch.manual_seed(seed)
            for inputs, frames in prepared:
                budget, frame = frames, 0
                batch = inputs.to(device)
                batch["audio_prompt_latents"] = batch["audio_prompt_latents"].to(model.dtype)
                output = model.generate(
                    **batch, max_new_tokens=frames, do_sample=True, return_dict_in_generate=True
                )
                wave = tts.processor.decode(output.audio_latents, output.audio_latents_mask)[0]
                waves.append(wave.float().cpu().numpy())
                offset += frames
                progress.advance_to(offset)
    finally:
        handle.remove()
    return np.concatenate(waves).astype(np.float32)


def _render_ambience(
    pipe: Any, prompt: str, seconds: float, seed: int, steps: int, progress: _Progress
) -> tuple[np.ndarray, int]:
    """Render a stereo ambience bed of at least `seconds` (or the model's maximum) and its rate."""
    import torch

    rate = int(pipe.vae.config.sampling_rate)
    longest = pipe.transformer.config.sample_size * pipe.vae.hop_length / rate
    # A little extra, so float rounding of the end second never leaves the bed a sample short.
    length = min(seconds + 0.05, longest)
    start = progress.done

    def on_step(step: int, timestep: Any, latents: Any) -> None:
        """Report each denoising step; raising here stops the pipeline at this step."""
        progress.advance_to(start + step + 1)

    # A CPU generator gives the same noise on every machine, so the seed reproduces the bed.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with exclusive_call(pipe), torch.inference_mode():
        output = pipe(
            prompt=prompt,
            negative_prompt=AMBIENCE_NEGATIVE_PROMPT,
            audio_end_in_s=length,
            num_inference_steps=steps,
            generator=generator,
            callback=on_step,
            callback_steps=1,
            output_type="np",
        )
    audio = np.asarray(output.audios[0], dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return audio[:2], rate


def _resample(channels: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample each channel of a (channels, n) array."""
    if in_rate == out_rate:
        return channels
    return np.stack([run_filter_graph(ch, in_rate, [], out_rate) for ch in channels])


def generate_speech(
    tts: SpeechModel,
    ambience_pipe: Any | None,
    req: SpeechRequest,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_preview: Callable[[Preview], None] | None = None,
) -> SpeechResult:
    """Speak one line in the profile's voice with pace, emotion and an optional ambience bed.

    `on_preview` gets the voice's waveform once it is synthesized (before the ambience is
    rendered) and, with an ambience bed, the waveform of the final mix.
    """
    validate_request(req)
    prompt = ambience_prompt(req.background_noise)
    if prompt is not None and ambience_pipe is None:
        raise ValueError("background_noise: no ambience model is configured on this worker")
    voice = decode_voice(req.voice_wav, tts.sample_rate)
    prosody = resolve_emotion(req.emotion)
    tempo = resolve_pace(req.pace) * prosody.tempo
    text = prepare_text(req.text, prosody)
    if should_stop is not None and should_stop():
        raise GenerationCancelled("cancelled before generation started")

    seed = secrets.randbelow(2**31) if req.seed is None else req.seed
    started = time.perf_counter()
    prepared = _tts_inputs(tts, text, voice)
    tts_frames = sum(frames for _, frames in prepared)
    progress = _Progress(
        tts_frames + (req.ambience_steps if prompt is not None else 0), on_step, should_stop
    )

    raw = _synthesize(tts, prepared, seed, progress)
    rate = req.sample_rate
    speech = apply_prosody(raw, tts.sample_rate, rate, tempo, prosody.semitones)
    level = _rms(speech)
    if level > 1e-6:
        speech *= _db_to_gain(SPEECH_LEVEL_DBFS) / level
    speech *= _db_to_gain(prosody.gain_db)
    lead, tail = round(LEAD_IN_SECONDS * rate), round(TAIL_SECONDS * rate)
    mono = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    mix = np.stack([mono, mono])
    if on_preview is not None:
        on_preview(waveform_preview(mono, "voice"))

    gain_db: float | None = None
    if prompt is not None:
        seconds = mix.shape[1] / rate
        # Seed + 1 keeps the bed independent of the voice's noise while still reproducible.
        bed, bed_rate = _render_ambience(
            ambience_pipe, prompt, seconds, (seed + 1) % 2**63, req.ambience_steps, progress
        )
        bed = _fit_ambience(_resample(bed, bed_rate, rate), mix.shape[1], rate)
        bed_level = _rms(bed)
        if bed_level > 1e-6:
            bed = bed * (_db_to_gain(SPEECH_LEVEL_DBFS + AMBIENCE_GAIN_DB) / bed_level)
        fade = min(round(AMBIENCE_FADE_SECONDS * rate), bed.shape[1] // 2)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            bed[:, :fade] *= ramp
            bed[:, -fade:] *= ramp[::-1]
        mix = mix + bed
        gain_db = AMBIENCE_GAIN_DB
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if peak > PEAK_CEILING:
        mix *= PEAK_CEILING / peak
    if on_preview is not None and gain_db is not None:
        on_preview(waveform_preview(mix, "voice with ambience"))
    progress.advance_to(progress.total)

    mp3 = encode_mp3(mix, rate, MP3_BITRATE)
    return SpeechResult(
        mp3=mp3,
        duration=mix.shape[1] / rate,
        sample_rate=rate,
        channels=CHANNELS,
        bitrate=MP3_BITRATE,
        seed=seed,
        voice=voice_id(req.voice_wav),
        generation_seconds=time.perf_counter() - started,
        ambience_gain_db=gain_db,
    )


__all__ = [
    "AMBIENCE_GAIN_DB",
    "CHANNELS",
    "EMOTIONS",
    "LEAD_IN_SECONDS",
    "MP3_BITRATE",
    "PACES",
    "SPEECH_LEVEL_DBFS",
    "TAIL_SECONDS",
    "Prosody",
    "SpeechModel",
    "SpeechRequest",
    "SpeechResult",
    "ambience_prompt",
    "decode_voice",
    "encode_mp3",
    "generate_speech",
    "load_tts_model",
    "resolve_emotion",
    "resolve_pace",
    "speech_request_from_task",
    "validate_request",
    "voice_id",
]
