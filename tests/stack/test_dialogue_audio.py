"""process_audio end to end over HTTP: the voice profile is fetched, the MP3 decodes."""

from __future__ import annotations

import io
import math
import struct
import wave

import av
import httpx
import pytest

from tests.conftest import PROJECT_A, AssetServer, RunningStack


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


@pytest.fixture(scope="module")
def assets(asset_server: AssetServer) -> str:
    asset_server.add("/voice.wav", "audio/wav", _voice_wav(140.0))
    asset_server.add("/page.html", "text/html", b"<html>not a voice</html>")
    return asset_server.url


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
