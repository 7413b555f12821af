"""Status reads: GET /api/v1/tasks/{id}/status over 10,000 stored tasks, sequentially and
from 8 threads, plus the project listing (`/api/v1/projects/{p}/tasks?limit=20`).

Tasks are inserted straight into the stack's database with moviegen_dagster.store.insert_task
(several projects, task types and statuses; most marked completed with an SQL UPDATE). The few
open tasks get a run id that names no Dagster run, so the reconcile sensor leaves them alone
while their status reads still take the open-task path (a Dagster run lookup).

    python -m bench.status_reads [--tasks 10000] [--reads 2000] [--threads 8]
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import (
    LoadMonitor,
    bench_stack,
    cpu_seconds_tree,
    idle_cpu_all,
    machine,
    print_kv,
    summary,
    write_results,
)

NAME = "status_reads"

# (project, share of tasks, has a key for reads)
PROJECTS: list[tuple[str, float]] = [
    ("bench_p0", 0.40),
    ("bench_p1", 0.25),
    ("bench_p2", 0.15),
    ("bench_p3", 0.10),
    ("bench_p4", 0.05),
    ("bench_p5", 0.05),
]
TASK_TYPES = [("generate_image", 0.6), ("generate_video", 0.25), ("process_audio", 0.15)]
STATUSES = [
    ("completed", 0.86),
    ("failed", 0.06),
    ("cancelled", 0.075),
    ("queued", 0.0025),
    ("processing", 0.0025),
]


def project_key(project: str) -> str:
    """The API key the benchmark seeds for a project."""
    return f"bench-key-{project}-0123456789abcdef"


def api_keys_spec() -> str:
    """MOVIEGEN_API_KEYS for every benchmark project."""
    return ",".join(f"{project_key(p)}:{p}" for p, _ in PROJECTS)


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    return rng.choices([w for w, _ in weighted], weights=[s for _, s in weighted])[0]


@dataclass
class Seeded:
    """The tasks the benchmark stored: id -> (project, status)."""

    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def ids(self, status: str | None = None) -> list[str]:
        """Task ids, optionally of one status."""
        return [t for t, (_, s) in self.tasks.items() if status is None or s == status]

    def counts(self) -> dict[str, int]:
        """Tasks per status."""
        out: dict[str, int] = {}
        for _, s in self.tasks.values():
            out[s] = out.get(s, 0) + 1
        return out


def seed_tasks(database_url: str, n: int, seed: int = 7) -> Seeded:
    """Insert n tasks with store.insert_task, then give them statuses and timestamps in SQL."""
    import psycopg
    from psycopg.rows import dict_row

    from moviegen_dagster import store

    rng = random.Random(seed)
    out = Seeded()
    t0 = time.monotonic()
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for i in range(n):
            project = _pick(rng, PROJECTS)
            ttype = _pick(rng, TASK_TYPES)
            character = f"char_{rng.randrange(40)}"
            if ttype == "generate_image":
                data: dict[str, Any] = {
                    "character_description": f"Character {character} in 1920s noir style",
                    "pose": "standing_confident",
                    "lighting": "dramatic_shadow",
                    "resolution": "1024x1024",
                }
            elif ttype == "generate_video":
                data = {"prompt": f"Scene {i}: a detective walks in the rain", "duration": 7.0}
            else:
                data = {"text": f"Line {i}: the rain never stops in this town.", "voice": "narr"}
            new = store.NewTask(
                project_id=project,
                task_type=ttype,
                priority=rng.choice((1, 2, 3, 5)),
                task_data=data,
                metadata={"character_id": character, "scene": i % 97},
                callback_url=None,
                partition_key=f"{project}/{character}",
            )
            row = store.insert_task(conn, new, estimated=60)
            out.tasks[str(row["task_id"])] = (project, _pick(rng, STATUSES))
            if i % 1000 == 999:
                conn.commit()
        conn.commit()
        out.seconds["insert"] = time.monotonic() - t0

        t1 = time.monotonic()
        by_status: dict[str, list[uuid.UUID]] = {}
        for tid, (_, status) in out.tasks.items():
            by_status.setdefault(status, []).append(uuid.UUID(tid))
        # Spread creation over the last ~20 hours (one transaction stamps every row alike).
        conn.execute(
            "UPDATE moviegen.tasks SET created_at = now() - random() * interval '20 hours' "
            "WHERE task_id = ANY(%s)",
            (list(map(uuid.UUID, out.tasks)),),
        )
        conn.execute(
            """
            UPDATE moviegen.tasks SET status = 'completed', progress = 1.0,
                current_step = 'upload_complete', run_id = gen_random_uuid()::text,
                started_at = created_at + random() * interval '30 seconds',
                completed_at = created_at + interval '30 seconds' + random() * interval '90 s',
                updated_at = now(),
                result = jsonb_build_object(
                    'media_key', project_id || '/images/' || task_id || '.jpg',
                    'media_url', 'http://127.0.0.1/media/' || project_id || '/images/'
                        || task_id || '.jpg',
                    'metadata', jsonb_build_object('resolution', '1024x1024', 'format', 'jpeg',
                        'file_size', 123456, 'seed', 42, 'model', 'tiny', 'steps', 4,
                        'work_units', 1.0))
            WHERE task_id = ANY(%s)
            """,
            (by_status.get("completed", []),),
        )
        conn.execute(
            """
            UPDATE moviegen.tasks SET status = 'failed', run_id = gen_random_uuid()::text,
                started_at = created_at + interval '5 seconds',
                completed_at = created_at + interval '20 seconds', updated_at = now(),
                error = '{"code": "generation_failed", "message": "RuntimeError: boom"}'
            WHERE task_id = ANY(%s)
            """,
            (by_status.get("failed", []),),
        )
        conn.execute(
            "UPDATE moviegen.tasks SET status = 'cancelled', current_step = 'cancelled', "
            "completed_at = created_at + interval '3 seconds', updated_at = now() "
            "WHERE task_id = ANY(%s)",
            (by_status.get("cancelled", []),),
        )
        # Open tasks carry a run id naming no run: the reconcile sensor skips them (it only
        # launches tasks without a run) and status reads still look the run up in Dagster.
        conn.execute(
            "UPDATE moviegen.tasks SET run_id = gen_random_uuid()::text WHERE task_id = ANY(%s)",
            (by_status.get("queued", []),),
        )
        conn.execute(
            "UPDATE moviegen.tasks SET status = 'processing', run_id = gen_random_uuid()::text, "
            "started_at = now(), progress = 0.4, current_step = 'generating_image' "
            "WHERE task_id = ANY(%s)",
            (by_status.get("processing", []),),
        )
        conn.commit()
        out.seconds["update"] = time.monotonic() - t1
    with psycopg.connect(database_url, autocommit=True) as conn:
        t2 = time.monotonic()
        conn.execute("VACUUM ANALYZE moviegen.tasks")
        out.seconds["vacuum_analyze"] = time.monotonic() - t2
    return out


@dataclass
class ReadRun:
    """Latencies (seconds) and non-200 answers of one read phase."""

    latencies: list[float]
    errors: dict[int, int]
    wall: float

    def report(self) -> dict[str, Any]:
        """reads/s and latency percentiles in ms."""
        stats = summary(self.latencies, 1000, 2)
        return {
            "requests": len(self.latencies),
            "wall_s": round(self.wall, 2),
            "reads_per_s": round(len(self.latencies) / self.wall, 1) if self.wall else None,
            "p50_ms": stats.get("median"),
            "p90_ms": stats.get("p90"),
            "p99_ms": stats.get("p99"),
            "max_ms": stats.get("max"),
            "non_200": {str(k): v for k, v in self.errors.items()},
        }


def _clients(api_url: str) -> dict[str, httpx.Client]:
    return {
        p: httpx.Client(base_url=api_url, headers={"X-API-Key": project_key(p)}, timeout=30)
        for p, _ in PROJECTS
    }


def read_paths(api_url: str, paths: list[tuple[str, str]], threads: int = 1) -> ReadRun:
    """GET each (project, path) with that project's key, spread over `threads` threads."""
    chunks = [paths[i::threads] for i in range(threads)]
    lat: list[list[float]] = [[] for _ in range(threads)]
    errs: list[dict[int, int]] = [{} for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        clients = _clients(api_url)
        try:
            # One warm connection per project before the clock starts.
            for project, client in clients.items():
                client.get(f"/api/v1/projects/{project}/tasks", params={"limit": 1})
            barrier.wait()
            for project, path in chunks[i]:
                t0 = time.perf_counter()
                resp = clients[project].get(path)
                lat[i].append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    errs[i][resp.status_code] = errs[i].get(resp.status_code, 0) + 1
        finally:
            for client in clients.values():
                client.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t_start = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t_start
    merged: dict[int, int] = {}
    for e in errs:
        for code, n in e.items():
            merged[code] = merged.get(code, 0) + n
    return ReadRun([x for part in lat for x in part], merged, wall)


def status_paths(seeded: Seeded, ids: list[str]) -> list[tuple[str, str]]:
    """(project, status path) for task ids."""
    return [(seeded.tasks[t][0], f"/api/v1/tasks/{t}/status") for t in ids]


def explain(database_url: str, project: str, some_id: str) -> dict[str, Any]:
    """Execution time (ms) of the listing's and the status read's queries, from EXPLAIN."""
    import psycopg

    from moviegen_dagster.store import TASK_COLUMNS

    queries = {
        "list_count": (
            "SELECT count(*) AS n FROM moviegen.tasks WHERE project_id = %s",
            (project,),
        ),
        "list_page1": (
            f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE project_id = %s "
            "ORDER BY created_at DESC, task_id DESC LIMIT 20 OFFSET 0",
            (project,),
        ),
        "list_completed_page1": (
            f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE project_id = %s "
            "AND status = 'completed' ORDER BY created_at DESC, task_id DESC LIMIT 20 OFFSET 0",
            (project,),
        ),
        "get_task": (
            f"SELECT {TASK_COLUMNS} FROM moviegen.tasks WHERE task_id = %s "
            "AND project_id = ANY(%s)",
            (uuid.UUID(some_id), [project]),
        ),
    }
    out: dict[str, Any] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, (sql, args) in queries.items():
            for _ in range(3):  # warm caches; keep the last
                plan = conn.execute(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}",  # type: ignore[arg-type]
                    args,
                ).fetchone()
            assert plan is not None
            doc = plan[0][0]
            out[name] = {
                "exec_ms": round(float(doc["Execution Time"]), 3),
                "top_node": doc["Plan"]["Node Type"],
                "plan_nodes": _node_types(doc["Plan"]),
            }
    return out


def _node_types(node: dict[str, Any]) -> list[str]:
    label = node["Node Type"] + (f" on {node['Index Name']}" if "Index Name" in node else "")
    return [label, *(t for child in node.get("Plans", []) for t in _node_types(child))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=2_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--list-reads", type=int, default=200)
    args = parser.parse_args()
    before = machine()
    rng = random.Random(11)
    with bench_stack(api_keys=api_keys_spec()) as bs:
        print(f"stack up in {bs.startup_seconds}s", flush=True)
        seeded = seed_tasks(bs.env["DATABASE_URL"], args.tasks)
        print(f"seeded {len(seeded.tasks)} tasks {seeded.counts()} {seeded.seconds}", flush=True)
        api_pid = bs.pid("api")
        # Idle CPU with the seeded open tasks present (the sync sensor looks at each of them).
        idle = idle_cpu_all(bs, 10.0)
        print(f"idle cpu over 10 s: {idle}", flush=True)
        load = LoadMonitor()
        phases: dict[str, Any] = {}
        all_ids = seeded.ids()

        def phase(name: str, paths: list[tuple[str, str]], threads: int = 1) -> None:
            cpu0 = cpu_seconds_tree(api_pid).get(api_pid, 0.0)
            run = read_paths(bs.api_url, paths, threads)
            cpu1 = cpu_seconds_tree(api_pid).get(api_pid, 0.0)
            rep = run.report()
            # Share of one core the API process used during the phase.
            rep["api_cpu_pct"] = round(100 * (cpu1 - cpu0) / run.wall, 1)
            phases[name] = rep
            load.sample()
            print(f"  {name:28s} {rep}", flush=True)

        # Warm-up (not reported): a few hundred reads.
        read_paths(bs.api_url, status_paths(seeded, rng.sample(all_ids, 200)), 1)
        ids = [rng.choice(all_ids) for _ in range(args.reads)]
        phase("status_sequential", status_paths(seeded, ids))
        ids = [rng.choice(all_ids) for _ in range(args.reads)]
        phase(f"status_{args.threads}_threads", status_paths(seeded, ids), args.threads)
        open_ids = seeded.ids("queued") + seeded.ids("processing")
        if open_ids:
            ids = [rng.choice(open_ids) for _ in range(200)]
            phase("status_open_tasks_sequential", status_paths(seeded, ids))
        big = PROJECTS[0][0]
        lst = f"/api/v1/projects/{big}/tasks?limit=20"
        phase("list_page1_sequential", [(big, lst)] * args.list_reads)
        phase(
            "list_completed_page1_seq",
            [(big, lst + "&status=completed")] * (args.list_reads // 2),
        )
        pages = [(big, f"{lst}&page={rng.randint(1, 200)}") for _ in range(args.list_reads // 2)]
        phase("list_random_page_seq", pages)
        phase(f"list_page1_{args.threads}_threads", [(big, lst)] * args.list_reads, args.threads)
        plans = explain(bs.env["DATABASE_URL"], big, seeded.ids("completed")[0])
        problems = bs.log_problems()
        startup = bs.startup_seconds
        load_report = load.report()

    results = {
        "name": NAME,
        "machine_before": before,
        "machine_after": machine(),
        "startup_seconds": startup,
        "tasks": len(seeded.tasks),
        "tasks_by_status": seeded.counts(),
        "tasks_in_listed_project": sum(1 for p, _ in seeded.tasks.values() if p == big),
        "seed_seconds": {k: round(v, 2) for k, v in seeded.seconds.items()},
        "idle_cpu_10s_after_seed": idle,
        "phases": phases,
        "explain": plans,
        "load": load_report,
        "log_problems": problems,
    }
    path = write_results(NAME, results)
    rows = [
        (
            name,
            f"{p['reads_per_s']:>7} req/s  p50 {p['p50_ms']:>7} ms  p99 {p['p99_ms']:>7} ms"
            f"  api cpu {p['api_cpu_pct']}%  non-200 {p['non_200'] or 0}",
        )
        for name, p in phases.items()
    ]
    rows += [(f"EXPLAIN {k}", f"{v['exec_ms']} ms {v['plan_nodes']}") for k, v in plans.items()]
    rows.append(("load1 min..max", f"{load_report['load1_min']}..{load_report['load1_max']}"))
    print_kv(f"status reads over {len(seeded.tasks)} tasks", rows)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
