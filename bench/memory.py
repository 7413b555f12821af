"""Resident memory of the API (idle, then after ~1,000 status/listing requests over 10,000
stored tasks) and of a worker (Celery main process + prefork children) before and after it
generated one 1024x1024 image. RSS from /proc (psutil); PSS too, since forked children
share pages with their parent and an RSS sum counts those twice.

    python -m bench.memory [--tasks 10000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from bench.common import (
    ONE_WORKER,
    bench_stack,
    image_body,
    machine,
    print_kv,
    rss_tree,
    submit,
    wait_terminal,
    write_results,
)
from bench.status_reads import (
    PROJECTS,
    api_keys_spec,
    project_key,
    read_paths,
    seed_tasks,
    status_paths,
)

NAME = "memory"
WORKER = "worker-gpu_light"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--resolution", default="1024x1024")
    args = parser.parse_args()
    before = machine()
    rng = random.Random(5)
    snaps: dict[str, Any] = {}
    with bench_stack(workers=ONE_WORKER, api_keys=api_keys_spec()) as bs:
        print(f"stack up in {bs.startup_seconds}s", flush=True)
        time.sleep(3)
        api_pid, worker_pid = bs.pid("api"), bs.pid(WORKER)
        snaps["api_idle"] = rss_tree(api_pid)
        snaps["worker_idle"] = rss_tree(worker_pid)
        snaps["others_idle"] = {
            name: rss_tree(int(proc.pid))
            for name, proc in bs.stack.procs
            if name not in ("api", WORKER)
        }

        seeded = seed_tasks(bs.env["DATABASE_URL"], args.tasks)
        ids = seeded.ids()
        n_list = args.requests // 5
        n_status = args.requests - n_list
        big = PROJECTS[0][0]
        t0 = time.monotonic()
        half = n_status // 2
        read_paths(bs.api_url, status_paths(seeded, [rng.choice(ids) for _ in range(half)]))
        read_paths(
            bs.api_url,
            status_paths(seeded, [rng.choice(ids) for _ in range(n_status - half)]),
            threads=8,
        )
        read_paths(
            bs.api_url,
            [(big, f"/api/v1/projects/{big}/tasks?limit=20&page={rng.randint(1, 50)}")] * n_list,
        )
        traffic_s = time.monotonic() - t0
        time.sleep(1)
        snaps["api_after_traffic"] = rss_tree(api_pid)

        with bs.client(project_key(big), timeout=60) as client:
            t1 = time.monotonic()
            accepted = submit(client, image_body(project=big, resolution=args.resolution))
            doc = wait_terminal(client, accepted["task_id"], timeout=600, interval=0.1)
            image_s = time.monotonic() - t1
        time.sleep(1)
        snaps["worker_after_image"] = rss_tree(worker_pid)
        snaps["api_after_image"] = rss_tree(api_pid)
        problems = bs.log_problems()
        startup = bs.startup_seconds

    def mb(key: str, field: str = "total_rss_mb") -> Any:
        return snaps[key][field]

    results = {
        "name": NAME,
        "machine_before": before,
        "machine_after": machine(),
        "startup_seconds": startup,
        "traffic_requests": args.requests,
        "traffic_seconds": round(traffic_s, 1),
        "image_status": doc["status"],
        "image_seconds": round(image_s, 1),
        "summary_mb": {
            "api_idle_rss": mb("api_idle", "main_rss_mb"),
            "api_after_traffic_rss": mb("api_after_traffic", "main_rss_mb"),
            "api_after_image_rss": mb("api_after_image", "main_rss_mb"),
            "worker_idle_rss_total": mb("worker_idle"),
            "worker_idle_pss_total": mb("worker_idle", "total_pss_mb"),
            "worker_after_image_rss_total": mb("worker_after_image"),
            "worker_after_image_pss_total": mb("worker_after_image", "total_pss_mb"),
            "worker_after_image_main_rss": mb("worker_after_image", "main_rss_mb"),
        },
        "snapshots": snaps,
        "log_problems": problems,
    }
    path = write_results(NAME, results)
    s = results["summary_mb"]
    wa = snaps["worker_after_image"]["processes"]
    print_kv(
        "memory (MiB)",
        [
            ("api idle RSS", s["api_idle_rss"]),
            (f"api after {args.requests} requests RSS", s["api_after_traffic_rss"]),
            (
                "worker idle RSS total (PSS)",
                f"{s['worker_idle_rss_total']} ({s['worker_idle_pss_total']})",
            ),
            (
                f"worker after one {args.resolution} image RSS total (PSS)",
                f"{s['worker_after_image_rss_total']} ({s['worker_after_image_pss_total']})",
            ),
            ("  per process RSS", ", ".join(f"{p['pid']}: {p['rss_mb']}" for p in wa)),
            ("image task", f"{doc['status']} in {image_s:.1f}s"),
        ],
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
