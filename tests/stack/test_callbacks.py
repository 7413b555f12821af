"""Signed callbacks on terminal states, delivered from the outbox by the daemon."""

from __future__ import annotations

import json

import psycopg
from standardwebhooks import Webhook

from tests.conftest import AssetServer, RunningStack, poll


def test_each_terminal_state_posts_one_signed_callback(
    running_stack: RunningStack, asset_server: AssetServer
) -> None:
    secret = running_stack.env["WEBHOOK_SIGNING_SECRET"]
    done_url = asset_server.url + "/hooks/done"
    cancel_url = asset_server.url + "/hooks/cancel"
    with running_stack.client() as client:
        completed = running_stack.submit_image(client, callback_url=done_url)["task_id"]
        cancelled = running_stack.submit_image(
            client, callback_url=cancel_url, task_data={"resolution": "1024x1024", "steps": 60}
        )["task_id"]
        assert client.delete(f"/api/v1/tasks/{cancelled}/cancel").status_code == 200
        assert running_stack.wait_terminal(client, completed)["status"] == "completed"

    done = poll(lambda: asset_server.received.get("/hooks/done"), timeout=60)
    cancel = poll(lambda: asset_server.received.get("/hooks/cancel"), timeout=60)
    for (headers, body), task_id, event in (
        (done[0], completed, "task.completed"),
        (cancel[0], cancelled, "task.cancelled"),
    ):
        lowered = {k.lower(): v for k, v in headers.items()}
        payload = Webhook(secret).verify(body, lowered)
        assert payload["event"] == event and payload["task_id"] == task_id
        assert lowered["webhook-id"].startswith("msg_")
    assert json.loads(done[0][1])["result"]["media_url"]

    # Exactly one event per terminal state, delivered on its first attempt. The receiver sees
    # the POST a moment before the sender records the outcome, so wait for the record.
    def outbox() -> list[tuple[str, str, int, bool]]:
        with psycopg.connect(running_stack.env["DATABASE_URL"]) as conn:
            return conn.execute(
                "SELECT task_id::text, event, attempts, delivered_at IS NOT NULL "
                "FROM moviegen.webhook_outbox WHERE task_id = ANY(%s::uuid[]) ORDER BY event",
                ([cancelled, completed],),
            ).fetchall()

    def all_recorded() -> list[tuple[str, str, int, bool]] | None:
        rows = outbox()
        return rows if len(rows) == 2 and all(row[3] for row in rows) else None

    rows = poll(all_recorded, timeout=60)
    assert rows == [
        (cancelled, "task.cancelled", 1, True),
        (completed, "task.completed", 1, True),
    ]


def test_private_callback_url_is_refused_at_submit(running_stack: RunningStack) -> None:
    with running_stack.client() as client:
        resp = client.post(
            "/api/v1/tasks/submit",
            json={
                "project_id": "project_a",
                "task_type": "generate_image",
                "task_data": {"character_description": "x"},
                "callback_url": "http://169.254.169.254/latest/meta-data/",
            },
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["field"] == "callback_url"
