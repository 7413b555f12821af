"""process_audio end to end over HTTP: the voice profile is fetched, the MP3 decodes."""

from __future__ import annotations

import io
import math
import struct
import threading
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import httpx
import pytest

from tests.conftest import PROJECT_A, RunningStack


def _voice_wav(freq: float, seconds: float = 1.5, rate: int = 24000) -> bytes:
    """A synthetic 'voice': a buzzy tone with a vibrato, as 16-bit mono WAV."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        f = freq * (1 + 0.02 * math.sin(2 * math.pi * 5 * t))
        v = 0.4 * math.sin(2 * math.pi * f * t) + 0.2 * math.sin(4 * math.pi * f * t)
        frames += struct.pack("<h", int(v * 32767))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


ROUTES = {
    "/voice.wav": ("audio/wav", _voice_wav(140.0)),
    "/page.html": ("text/html", b"<html>not a voice</html>"),
}


class _Assets(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path not in ROUTES:
            self.send_response(404)
            self.end_headers()
            return
        ctype, body = ROUTES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def assets() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Assets)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _submit(client: httpx.Client, task_data: dict) -> str:
    resp = client.post(
        "/api/v1/tasks/submit",
        json={
            "project_id": PROJECT_A,
            "task_type": "process_audio",
            "task_data": task_data,
            "metadata": {"dialogue_id": "scene_005_line_001"},
        },
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def test_dialogue_line_is_a_decodable_mp3_with_its_metadata(
    running_stack: RunningStack, assets: str
) -> None:
    with running_stack.client() as client:
        task_id = _submit(
            client,
            {
                "text": "I have been expecting you, detective.",
                "character_voice_profile": f"{assets}/voice.wav",
                "emotion": "mysterious",
                "pace": "normal",
                "background_noise": "rain_ambience",
            },
        )
        doc = running_stack.wait_terminal(client, task_id, timeout=240)
    assert doc["status"] == "completed", doc
    meta = doc["result"]["metadata"]
    assert meta["sample_rate"] == 44100 and meta["channels"] == 2 and meta["format"] == "mp3"
    assert meta["bitrate"] > 0 and meta["voice"] and isinstance(meta["seed"], int)
    media = httpx.get(doc["result"]["media_url"], timeout=10)
    assert media.status_code == 200 and media.headers["content-type"] == "audio/mpeg"
    assert len(media.content) == meta["file_size"]
    assert f"/media/{PROJECT_A}/audio/{task_id}.mp3" in doc["result"]["media_url"]
    with av.open(io.BytesIO(media.content)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3")
        assert stream.rate == 44100 and stream.channels == 2
        samples = sum(f.samples for f in container.decode(stream))
    assert abs(samples / 44100 - meta["duration"]) < 0.1


@pytest.mark.parametrize(
    ("voice", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("{assets}/page.html", "content type"),
        ("{assets}/missing.wav", "HTTP 404"),
    ],
)
def test_bad_voice_profile_fails_the_task_naming_the_input(
    running_stack: RunningStack, assets: str, voice: str, reason: str
) -> None:
    with running_stack.client() as client:
        task_id = _submit(
            client,
            {"text": "Hello there.", "character_voice_profile": voice.format(assets=assets)},
        )
        doc = running_stack.wait_terminal(client, task_id, timeout=120)
    assert doc["status"] == "failed"
    assert "character_voice_profile" in doc["error"] and reason in doc["error"]
