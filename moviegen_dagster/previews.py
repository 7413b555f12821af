"""Small previews of a take while it is made: a frame, the image, a waveform.

Only what the pipelines produce anyway is previewed (the last frame of each finished video
clip, the decoded image, the synthesized voice before its ambience is rendered), so a preview
costs a thumbnail encode, never an extra decode. They reach clients as `preview` events of the
task's event stream and through `GET /api/v1/tasks/{task_id}/preview`.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the API reads stored previews without loading imaging libraries
    import numpy as np
    import PIL.Image

# Longest side of a frame preview: enough to judge a take, small enough for an event.
MAX_SIDE = 320
JPEG_QUALITY = 70
WAVEFORM_SIZE = (480, 96)
_WAVE_COLOUR = (64, 156, 255)
_WAVE_BACKGROUND = (24, 24, 28)


@dataclass(frozen=True)
class Preview:
    """One encoded preview image and what it shows."""

    kind: str  # "frame" (a video frame), "image" or "waveform"
    label: str
    media_type: str
    data: bytes
    width: int
    height: int

    def document(self) -> dict[str, Any]:
        """The `preview` event's data: what it shows, and the image as a data URL."""
        encoded = base64.b64encode(self.data).decode("ascii")
        return {
            "kind": self.kind,
            "label": self.label,
            "media_type": self.media_type,
            "width": self.width,
            "height": self.height,
            "data_url": f"data:{self.media_type};base64,{encoded}",
        }


def inline_data_url(preview: Preview, max_chars: int) -> str | None:
    """The preview as a WebP data URL of at most `max_chars` (as large as fits), or None."""
    import PIL.Image

    image = PIL.Image.open(io.BytesIO(preview.data)).convert("RGB")
    for side in (240, 192, 160, 128, 96, 64):
        thumb = image.copy()
        thumb.thumbnail((side, side), PIL.Image.Resampling.BILINEAR)
        for quality in (60, 40):
            buffer = io.BytesIO()
            thumb.save(buffer, format="WEBP", quality=quality)
            url = "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            if len(url) <= max_chars:
                return url
    return None


def frame_preview(frame: np.ndarray | PIL.Image.Image, label: str, kind: str = "frame") -> Preview:
    """A JPEG thumbnail (longest side at most MAX_SIDE) of an RGB frame or image."""
    import PIL.Image

    image = frame if isinstance(frame, PIL.Image.Image) else PIL.Image.fromarray(frame)
    image = image.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), PIL.Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return Preview(kind, label, "image/jpeg", buffer.getvalue(), image.width, image.height)


def waveform_preview(samples: np.ndarray, label: str) -> Preview:
    """A PNG of the signal's envelope (per pixel column: min to max over all channels)."""
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw

    width, height = WAVEFORM_SIZE
    signal = np.asarray(samples, dtype=np.float32)
    signal = signal[None] if signal.ndim == 1 else signal.reshape(-1, signal.shape[-1])
    image = PIL.Image.new("RGB", (width, height), _WAVE_BACKGROUND)
    draw = PIL.ImageDraw.Draw(image)
    middle = (height - 1) / 2
    draw.line([(0, middle), (width - 1, middle)], fill=_WAVE_COLOUR)
    if signal.size:
        peak = max(float(np.max(np.abs(signal))), 1e-6)
        # (channels, samples) -> per-sample extremes over channels -> per-column extremes.
        highs = np.array_split(signal.max(axis=0) / peak, min(width, signal.shape[1]))
        lows = np.array_split(signal.min(axis=0) / peak, min(width, signal.shape[1]))
        for x, (high, low) in enumerate(zip(highs, lows, strict=True)):
            top, bottom = middle - float(high.max()) * middle, middle - float(low.min()) * middle
            draw.line([(x, top), (x, bottom)], fill=_WAVE_COLOUR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return Preview("waveform", label, "image/png", buffer.getvalue(), width, height)
