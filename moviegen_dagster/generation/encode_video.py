"""In-memory MP4 encoding with PyAV: H.264 video (libx264) and AAC audio, moov atom first."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image

VIDEO_CODEC = "h264"  # what decoders report for libx264 output
AUDIO_CODEC = "aac"
CRF = 23
PRESET = "veryfast"
# AAC is delivered at a broadcast rate; other model rates (LTX-2's vocoder gives 24 kHz) are
# resampled by libswresample inside PyAV's encoder.
DELIVERY_SAMPLE_RATES = (44100, 48000)
DEFAULT_SAMPLE_RATE = 48000
AUDIO_BITRATE = 192_000
# Samples handed to the encoder per frame; PyAV re-frames them to AAC's 1024-sample frames.
_AUDIO_CHUNK = 4096

Frames = np.ndarray | Sequence[PIL.Image.Image] | Sequence[np.ndarray]


def delivery_sample_rate(sample_rate: int) -> int:
    """The AAC rate used for audio arriving at sample_rate: kept if 44.1/48 kHz, else 48 kHz."""
    return sample_rate if sample_rate in DELIVERY_SAMPLE_RATES else DEFAULT_SAMPLE_RATE


def _as_rgb_array(frame: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """One frame as a contiguous HxWx3 uint8 array."""
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"frames: each frame must be HxWx3, got shape {array.shape}")
    if array.dtype != np.uint8:
        # Float frames are taken as [0, 1], the diffusers "np" output convention.
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def _cover_crop(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Center-crop array to the aspect ratio of width x height (no scaling)."""
    src_h, src_w = array.shape[:2]
    if src_w * height > width * src_h:  # too wide: trim the sides
        crop_w = max(1, round(src_h * width / height))
        left = (src_w - crop_w) // 2
        return array[:, left : left + crop_w]
    crop_h = max(1, round(src_w * height / width))
    top = (src_h - crop_h) // 2
    return array[top : top + crop_h]


def _planar_audio(audio: np.ndarray) -> np.ndarray:
    """Audio as float32 (channels, samples) with 1 or 2 channels."""
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"audio: expected (channels, samples), got shape {array.shape}")
    if array.shape[0] > 2 and array.shape[1] <= 2:
        array = array.T  # (samples, channels) given
    if array.shape[0] not in (1, 2):
        raise ValueError(f"audio: 1 or 2 channels supported, got shape {array.shape}")
    return np.ascontiguousarray(np.clip(array, -1.0, 1.0))


def encode_mp4(
    frames: Frames,
    fps: int,
    audio: np.ndarray | None,
    sample_rate: int,
    *,
    size: tuple[int, int] | None = None,
) -> bytes:
    """Encode frames (and optional audio) as an H.264/AAC MP4 with +faststart, in memory."""
    if len(frames) == 0:
        raise ValueError("frames: at least one frame is required")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps: must be a positive integer, got {fps!r}")
    first = _as_rgb_array(frames[0])
    out_w, out_h = size if size is not None else (first.shape[1], first.shape[0])
    if out_w % 2 or out_h % 2 or out_w < 2 or out_h < 2:
        raise ValueError(f"size: yuv420p needs even width and height, got {out_w}x{out_h}")
    planar: np.ndarray | None = None
    if audio is not None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate: must be a positive integer, got {sample_rate!r}")
        planar = _planar_audio(audio)
        if planar.shape[0] == 1:
            planar = np.repeat(planar, 2, axis=0)  # AAC track is always stereo

    # faststart moves the moov atom (the index) before mdat on close, so playback or streaming can
    # start before the whole file arrives. FFmpeg's second pass re-opens the output *by name*, so a
    # BytesIO target fails ("No such file or directory: '<none>'"): write a private temp file and
    # read it back; the caller still gets bytes.
    with tempfile.TemporaryDirectory(prefix="moviegen-mp4-") as scratch:
        path = Path(scratch) / "out.mp4"
        _write_mp4(str(path), frames, fps, planar, sample_rate, out_w, out_h)
        return path.read_bytes()


def _write_mp4(
    path: str,
    frames: Frames,
    fps: int,
    planar: np.ndarray | None,
    sample_rate: int,
    out_w: int,
    out_h: int,
) -> None:
    """Mux frames and stereo planar audio into an MP4 file at path (see encode_mp4)."""
    import av

    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream(
            "libx264", rate=fps, options={"crf": str(CRF), "preset": PRESET}
        )
        video.width, video.height = out_w, out_h
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, fps)

        audio_stream = None
        if planar is not None:
            out_rate = delivery_sample_rate(sample_rate)
            audio_stream = container.add_stream(AUDIO_CODEC, rate=out_rate)
            audio_stream.layout = "stereo"
            audio_stream.bit_rate = AUDIO_BITRATE

        audio_sent = 0  # input samples already handed to the audio encoder

        def send_audio(until: int) -> None:
            """Encode input audio samples up to index `until` (exclusive)."""
            nonlocal audio_sent
            if audio_stream is None or planar is None:
                return
            until = min(until, planar.shape[1])
            while audio_sent < until:
                end = min(audio_sent + _AUDIO_CHUNK, until)
                chunk = np.ascontiguousarray(planar[:, audio_sent:end])
                aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                aframe.sample_rate = sample_rate
                # pts in input samples; PyAV's resampler retimes to the stream's rate.
                aframe.pts = audio_sent
                aframe.time_base = Fraction(1, sample_rate)
                container.mux(audio_stream.encode(aframe))
                audio_sent = end

        for index in range(len(frames)):
            array = _as_rgb_array(frames[index])
            if (array.shape[1], array.shape[0]) != (out_w, out_h):
                # Crop to the delivery aspect first so scaling never distorts the picture;
                # swscale then scales each frame as it is encoded, so only small frames are
                # ever held in memory, even for 1080p output.
                array = np.ascontiguousarray(_cover_crop(array, out_w, out_h))
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if (frame.width, frame.height) != (out_w, out_h):
                frame = frame.reformat(
                    width=out_w, height=out_h, format="yuv420p", interpolation="BICUBIC"
                )
            frame.pts = index
            container.mux(video.encode(frame))
            # Interleave audio with video as it goes, so the muxer never queues a whole track.
            send_audio((index + 1) * sample_rate // fps)
        container.mux(video.encode(None))
        if audio_stream is not None and planar is not None:
            send_audio(planar.shape[1])
            container.mux(audio_stream.encode(None))
