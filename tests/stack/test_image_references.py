"""generate_image with a style guide and reference images fetched from a real server."""

from __future__ import annotations

from tests.conftest import AssetServer, RunningStack, jpeg


def test_references_condition_the_take_and_bad_ones_fail_clearly(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    style = asset_server.add("/noir_style.jpg", "image/jpeg", jpeg((20, 20, 30), (96, 64)))
    ref = asset_server.add("/ref1.jpg", "image/jpeg", jpeg((200, 180, 150), (96, 64)))
    fake = asset_server.add("/fake.jpg", "image/jpeg", b"this is not a jpeg")
    with running_stack.client() as client:
        good = running_stack.submit_image(
            client, task_data={"style_guide": style, "reference_images": [ref, ref]}
        )["task_id"]
        bad = running_stack.submit_image(client, task_data={"reference_images": [ref, fake]})[
            "task_id"
        ]
        done = running_stack.wait_terminal(client, good)
        failed = running_stack.wait_terminal(client, bad)
    assert done["status"] == "completed", done
    assert failed["status"] == "failed"
    assert failed["error"].startswith("reference_images[1]: not a decodable image"), failed
