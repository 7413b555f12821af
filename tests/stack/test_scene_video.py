"""generate_video end to end over HTTP: storyboard frames fetched, an H.264 + AAC MP4 back."""

from __future__ import annotations

import io
import re

import av
import httpx
from dagster import DagsterEventType, RunsFilter

from tests.conftest import PROJECT_A, AssetServer, RunningStack, jpeg, poll, scene_task


def test_scene_video_is_an_h264_aac_mp4_in_the_delivery_format(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    frames = [
        asset_server.add("/frame1.jpg", "image/jpeg", jpeg((30, 30, 60))),
        asset_server.add("/frame2.jpg", "image/jpeg", jpeg((90, 60, 30))),
    ]
    body = scene_task(frames, resolution="640x360", fps=24)
    with running_stack.client() as client:
        resp = client.post("/api/v1/tasks/submit", json=body)
        assert resp.status_code == 202, resp.text
        task_id = resp.json()["task_id"]
        steps: set[str] = set()

        def done() -> dict | None:
            doc = client.get(f"/api/v1/tasks/{task_id}/status").json()
            steps.add(doc["current_step"])
            return doc if doc["status"] in ("completed", "failed", "cancelled") else None

        doc = poll(done, timeout=300, interval=0.1)
    assert doc["status"] == "completed", doc
    assert "rendering_video" in steps
    # Fast phases may fall between two polls; the order of those seen must be the pipeline's.
    order = ["fetching_inputs", "loading_model", "rendering_video", "generating_audio", "encoding"]
    seen = [s for s in order if s in steps]
    assert seen == sorted(seen, key=order.index)
    meta = doc["result"]["metadata"]
    assert meta["resolution"] == "640x360" and meta["fps"] == 24
    assert abs(meta["duration"] - 2.0) < 0.05
    media = httpx.get(doc["result"]["media_url"], timeout=30)
    assert media.status_code == 200 and media.headers["content-type"] == "video/mp4"
    assert f"/media/{PROJECT_A}/videos/{task_id}.mp4" in doc["result"]["media_url"]
    data = media.content
    assert data.find(b"moov") < data.find(b"mdat"), "not faststart"
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (640, 360)
        assert video.average_rate == 24
        assert audio.codec_context.name == "aac"
        assert audio.rate == meta["audio_sample_rate"]
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 2.0) < 0.15
    runs = running_stack.instance().get_runs(RunsFilter(tags={"moviegen/task_id": task_id}))
    assert runs[0].tags["dagster/partition"] == f"{PROJECT_A}/scene_005"
    assert runs[0].tags["dagster-celery/queue"] == "gpu_heavy"

    # The last clip's last frame is the task's preview, and the take's preview in Dagster.
    with running_stack.client() as client:
        still = client.get(f"/api/v1/tasks/{task_id}/preview")
    assert still.status_code == 200 and still.headers["content-type"] == "image/jpeg"
    assert still.headers["x-preview-kind"] == "frame"
    assert re.fullmatch(r"clip (\d+) of \1", still.headers["x-preview-label"])
    [take] = [
        entry.asset_materialization
        for entry in running_stack.instance().all_logs(
            runs[0].run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        )
        if entry.asset_materialization
        and entry.asset_materialization.asset_key.path == ["scene_video"]
    ]
    markdown = take.metadata["preview"].value
    # Inline in the UI (short markdown): a small WebP of that frame, above the video's link.
    assert len(markdown) < 1000, len(markdown)
    assert re.match(r"!\[clip \d+ of \d+\]\(data:image/webp;base64,[A-Za-z0-9+/=]+\)", markdown)
    assert f"/media/{PROJECT_A}/videos/{task_id}.mp4)" in markdown
