"""`moviegen up` (what `make up` runs) starts the stack, prints a working key, and Ctrl-C
stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from moviegen_dagster.stack import free_port


def test_up_prints_urls_and_key_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    api_port, dagster_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DAGSTER_HOME", "MOVIEGEN_ADMIN_KEY")
    }
    env.update(
        MOVIEGEN_HOME=str(tmp_path / "home"),
        MOVIEGEN_API_PORT=str(api_port),
        MOVIEGEN_DAGSTER_PORT=str(dagster_port),
        MOVIEGEN_WORKERS="gpu_heavy=1,gpu_light=1",
        MOVIEGEN_API_KEYS="",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "moviegen_dagster.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        output = "".join(lines)
        assert "MovieGen is up." in output, output[-3000:]
        assert f"http://127.0.0.1:{api_port}/api/v1" in output
        assert f"http://127.0.0.1:{dagster_port}" in output
        key = next(ln.split(":", 1)[1].strip() for ln in lines if "API key" in ln)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5
        resp = httpx.get(
            f"http://127.0.0.1:{api_port}/api/v1/workers/status",
            headers={"X-API-Key": key},
            timeout=10,
        )
        assert resp.status_code == 200
        assert {w["worker_type"] for w in resp.json()["workers"]} == {"gpu_heavy", "gpu_light"}
        assert httpx.get(f"http://127.0.0.1:{dagster_port}/server_info", timeout=10).is_success
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    pgdata = str(tmp_path / "home" / "pg")
    postgres = [
        p for p in psutil.process_iter(["cmdline"]) if pgdata in " ".join(p.info["cmdline"] or [])
    ]
    assert not postgres, "the embedded PostgreSQL outlived `moviegen up`"
