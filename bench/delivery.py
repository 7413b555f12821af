"""Delivery cost: what R2 upload, PayloadCMS registration and the signed callback add per task.

A stack configured for R2 (a moto S3 server on 127.0.0.1) and a real PayloadCMS 3 (the test
app), with a callback receiver on 127.0.0.1. For each small image task the take's metadata
gives `upload_seconds` and `cms_seconds`; callback lag = receipt time - completed_at.

    python -m bench.delivery [--tasks 10]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dagster import DagsterEventType, RunsFilter

from bench.common import (
    ONE_WORKER,
    bench_stack,
    image_body,
    machine,
    parse_ts,
    print_kv,
    submit,
    summary,
    wait_terminal,
    write_results,
)

RECEIVED: dict[str, float] = {}


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        RECEIVED[self.path.rsplit("/", 1)[1]] = time.time()
        self.send_response(204)
        self.end_headers()


def main() -> None:
    """Run the benchmark and print/write its numbers."""
    from tests.payload_support import running_payload
    from tests.s3_support import moto_s3

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with (
            moto_s3("bench") as endpoint,
            running_payload(Path(tempfile.mkdtemp(prefix="bench-payload-"))) as payload,
            bench_stack(
                workers=ONE_WORKER,
                extra_env={
                    "R2_ENDPOINT_URL": endpoint,
                    "R2_BUCKET": "bench",
                    "R2_ACCESS_KEY_ID": "test",
                    "R2_SECRET_ACCESS_KEY": "test",
                    "R2_REGION": "us-east-1",
                    "PAYLOAD_URL": payload.url,
                    "PAYLOAD_API_KEY": payload.api_key,
                    "MOVIEGEN_URL_ALLOWLIST": "127.0.0.1",
                    "MOVIEGEN_TORCH_THREADS": "1",
                },
            ) as bs,
            bs.client() as client,
        ):
            uploads, cms, lags = [], [], []
            instance = bs.instance()
            for i in range(args.tasks):
                task_id = submit(client, {**image_body(), "callback_url": f"{hook}/{i}"})["task_id"]
                doc = wait_terminal(client, task_id, timeout=300, interval=0.05)
                run = instance.get_runs(RunsFilter(tags={"moviegen/task_id": task_id}))[0]
                md = (
                    instance.get_records_for_run(
                        run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
                    )
                    .records[0]
                    .asset_materialization.metadata
                )
                uploads.append(float(md["upload_seconds"].value))
                cms.append(float(md["cms_seconds"].value))
                deadline = time.time() + 60
                while str(i) not in RECEIVED and time.time() < deadline:
                    time.sleep(0.02)
                lags.append(RECEIVED.pop(str(i), float("nan")) - parse_ts(doc["completed_at"]))
            results = {
                "machine": machine(),
                "r2_upload_seconds": summary(uploads),
                "payload_register_seconds": summary(cms),
                "callback_lag_seconds": summary(lags),
            }
            print_kv(
                "delivery",
                [
                    ("R2 (moto) upload s", results["r2_upload_seconds"]),
                    ("Payload register s", results["payload_register_seconds"]),
                    ("callback after completed_at s", results["callback_lag_seconds"]),
                ],
            )
            write_results("delivery", results)
    finally:
        receiver.shutdown()


if __name__ == "__main__":
    main()
