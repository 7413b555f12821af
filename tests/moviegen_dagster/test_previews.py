"""Preview encoding: thumbnails, waveforms, and the inline picture of a take in the Dagster UI."""

from __future__ import annotations

import base64
import io

import numpy as np
import PIL.Image

from moviegen_dagster.lineage import MARKDOWN_INLINE_CHARS, preview
from moviegen_dagster.previews import frame_preview, inline_data_url, waveform_preview

URL = "http://127.0.0.1:8001/media/p/videos/t.mp4"


def _decoded(data_url: str) -> PIL.Image.Image:
    header, encoded = data_url.split(",", 1)
    assert header == "data:image/webp;base64"
    return PIL.Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_frames_are_thumbnailed_keeping_their_shape() -> None:
    frame = np.zeros((1080, 1920, 3), dtype=np.uint8)
    still = frame_preview(frame, "clip 1 of 3")
    assert (still.width, still.height, still.media_type) == (320, 180, "image/jpeg")
    assert PIL.Image.open(io.BytesIO(still.data)).size == (320, 180)


def test_inline_picture_fits_the_budget_even_for_noise() -> None:
    rng = np.random.default_rng(0)
    noise = frame_preview((rng.random((180, 320, 3)) * 255).astype(np.uint8), "clip 2 of 2")
    url = inline_data_url(noise, 850)
    assert url is not None and len(url) <= 850
    assert max(_decoded(url).size) <= 240
    assert inline_data_url(noise, 40) is None  # nothing fits: no picture rather than a broken one


def test_video_and_audio_takes_show_their_last_preview_inline() -> None:
    yy, xx = np.mgrid[0:180, 0:320]
    smooth = np.stack([xx * 255 // 320, yy * 255 // 180, (xx + yy) * 255 // 500], -1)
    still = frame_preview(smooth.astype(np.uint8), "clip 3 of 3")
    markdown = preview("mp4", URL, still)
    assert len(markdown) < MARKDOWN_INLINE_CHARS
    assert markdown.startswith("![clip 3 of 3](data:image/webp;base64,")
    assert markdown.endswith(f"[▶ scene video (MP4)]({URL})")
    # A smooth frame gets the largest size tried.
    data_url = markdown.split("(", 1)[1].split(")", 1)[0]
    assert _decoded(data_url).size == (240, 135)

    wave = waveform_preview(np.sin(np.linspace(0, 300, 44100)), "voice")
    audio = preview("mp3", URL, wave)
    assert len(audio) < MARKDOWN_INLINE_CHARS and "(data:image/webp;base64," in audio
    # Without a preview (or for an image, shown by its own URL) there is no inline picture.
    assert preview("mp4", URL, None) == f"[▶ scene video (MP4)]({URL})"
    assert preview("jpg", URL, still) == f"![take]({URL})"
