"""The user-facing commands: start scripts, cleanup.sh and add_task.py, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from shared.utils import free_port


def script_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'tasks.db'}",
            "DISPATCHER_PORT": str(port), "RUN_DIR": str(tmp_path / "run"),
            "DISPATCHER_URL": ""}


def test_scripts_start_and_cleanup_stops_exactly_them(tmp_path: Path) -> None:
    port = free_port()
    env = script_env(tmp_path, port)
    logs = tmp_path / "logs"
    logs.mkdir()
    started = [
        subprocess.Popen(["./start_dispatcher.sh"], cwd=REPO_ROOT, env=env,
                         stdout=open(logs / "d.log", "wb"), stderr=subprocess.STDOUT),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 60, interval=0.1, message="dispatcher via script")
        for name in ("sw-1", "sw-2"):
            started.append(subprocess.Popen(["./start_worker.sh", name], cwd=REPO_ROOT, env=env,
                                            stdout=open(logs / f"{name}.log", "wb"),
                                            stderr=subprocess.STDOUT))
        out = subprocess.run([sys.executable, "add_task.py", "3", "100000", "trial_division",
                              "--wait", "--timeout", "60"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("count=9592") == 3 and "completed" in out.stdout
        pidfiles = sorted(p.name for p in (tmp_path / "run").glob("*.pid"))
        assert pidfiles == [f"dispatcher-{port}.pid", "worker-sw-1.pid", "worker-sw-2.pid"]
        (tmp_path / "run" / "worker-gone.pid").write_text("999999\n")
        cleaned = subprocess.run(["./cleanup.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert cleaned.returncode == 0, cleaned.stderr
        for name in ("worker-sw-1", "worker-sw-2", f"dispatcher-{port}"):
            assert f"stopped {name} (pid" in cleaned.stdout, cleaned.stdout
        assert "removed stale PID file for worker-gone" in cleaned.stdout
        assert [p.wait(timeout=10) for p in started] == [0, 0, 0]
        assert not list((tmp_path / "run").glob("*.pid"))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_add_task_prints_ids_and_json(cluster: LocalCluster) -> None:
    env = {**cluster.env}
    out = subprocess.run([sys.executable, "add_task.py", "5", "100000"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "submitted 5 task(s): 1 2 3 4 5"
    cluster.start_worker("w1")
    out = subprocess.run([sys.executable, "add_task.py", "--type", "sum_of_squares", "--params",
                          '{"start": 1, "end": 10}', "--wait", "--json"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["task_ids"] == [6] and doc["tasks"][0]["result"]["sum"] == 385


def test_add_task_reports_errors_in_one_line(cluster: LocalCluster) -> None:
    refused = subprocess.run([sys.executable, "add_task.py", "1", "-5"], cwd=REPO_ROOT,
                             env=cluster.env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "params.limit" in refused.stderr
    down = subprocess.run([sys.executable, "add_task.py", "1", "100", "--url",
                           f"http://127.0.0.1:{free_port()}"], cwd=REPO_ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("error: cannot reach the dispatcher")
    assert down.stderr.count("\n") == 1
