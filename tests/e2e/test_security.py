"""A secured cluster end to end: tokens from the CLI, a bound worker, add_task.py (tasks and a
split job), the dashboard's open page and admin-only data, revocation; the refusal to serve other
hosts without credentials; memory under maximum-size requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from benchmarks.memory_load import peak_rss_mib, run_load
from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT, Config
from tests.conftest import ClusterFactory


def tokens_cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher.tokens", *args], cwd=REPO_ROOT,
                          env=cluster.env, capture_output=True, text=True, timeout=60)


def create_token(cluster: LocalCluster, *args: str) -> str:
    out = tokens_cli(cluster, "create", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def add_task(cluster: LocalCluster, token: str | None, *args: str
             ) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "DISPATCHER_TOKEN": token or ""}
    return subprocess.run([sys.executable, "add_task.py", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=90)


def test_a_secured_cluster_runs_tasks_for_token_holders_only(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(AUTH_REQUIRED="true", TOKEN_CACHE_SECONDS="2")
    client = create_token(cluster, "--role", "client")
    worker = create_token(cluster, "--role", "worker", "--worker-id", "sec-1")
    listed = tokens_cli(cluster, "list").stdout
    assert "client" in listed and "sec-1" in listed
    assert client.split("_", 2)[2] not in listed and worker.split("_", 2)[2] not in listed
    cluster.start_worker("sec-1", env={"DISPATCHER_TOKEN": worker})

    done = add_task(cluster, client, "1", "10000", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "count=1229" in done.stdout and "sec-1" in done.stdout

    refused = add_task(cluster, None, "1", "100")
    assert refused.returncode != 0
    assert "401" in refused.stderr and "DISPATCHER_TOKEN" in refused.stderr
    stolen = requests.post(f"{cluster.url}/submit-task", json={"task_type": "noop"},
                           headers={"Authorization": f"Bearer {worker}"}, timeout=10)
    assert stolen.status_code == 403  # a worker token cannot submit

    split = add_task(cluster, client, "--split", "2", "1", "10000", "--wait", "--timeout", "60")
    assert split.returncode == 0, split.stderr  # a split job: its group read with the token
    assert "completed" in split.stdout

    # The dashboard: the page and its files are open, the data it polls is for admins.
    admin = create_token(cluster, "--role", "admin")
    for path in ("/", "/dashboard", "/dashboard/static/dashboard.js"):
        assert requests.get(f"{cluster.url}{path}", timeout=10).status_code == 200, path
    state = f"{cluster.url}/dashboard/state"
    assert requests.get(state, timeout=10).status_code == 401
    as_client = requests.get(state, headers={"Authorization": f"Bearer {client}"}, timeout=10)
    assert as_client.status_code == 403
    as_admin = requests.get(state, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert as_admin.status_code == 200 and as_admin.json()["tasks"]["completed"] >= 3

    token_id = client.split("_")[1]
    assert tokens_cli(cluster, "revoke", token_id).returncode == 0
    auth = {"Authorization": f"Bearer {client}"}
    wait_until(lambda: requests.get(f"{cluster.url}/tasks", headers=auth, timeout=5
                                    ).status_code == 401, 10, interval=0.2,
               message="revocation taking effect")
    assert tokens_cli(cluster, "revoke", token_id).returncode == 1
    assert requests.get(f"{cluster.url}/health", timeout=5).status_code == 200  # stays open


@pytest.mark.parametrize("cluster_backend", ["sqlite"])  # the supervisor alone: any store
def test_a_supervisor_announces_a_dead_child_with_its_prefix_token(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(AUTH_REQUIRED="true", CHECKPOINT_INTERVAL="0.3")
    admin = create_token(cluster, "--role", "admin")
    worker = create_token(cluster, "--role", "worker", "--worker-id", "host-*")
    cluster.http.headers["Authorization"] = f"Bearer {admin}"
    cluster.start_supervisor("host", 2, env={"DISPATCHER_TOKEN": worker})
    wait_until(lambda: {w["worker_id"] for w in cluster.stats()["workers"]["details"]
                        if w["alive"]} == {"host-1", "host-2"}, 60, interval=0.1,
               message="two supervised workers with one prefix token")
    task_id = cluster.submit("sleep", {"seconds": 3}, max_attempts=5)
    view = wait_until(lambda: (v := cluster.task(task_id))["progress"] > 0 and v, 30,
                      message="the task checkpointed")
    victim = view["worker_id"]
    pid = cluster.child_pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The supervisor's announcement carries the token: requeued at once, not after a timeout.
    wait_until(lambda: cluster.stats()["reclaims"]["worker_restarted"] >= 1, 30, interval=0.05,
               message="the task requeued as worker_restarted")
    told = f"that worker {victim} died: its tasks are requeued (HTTP 200)"
    wait_until(lambda: told in cluster.worker_log("host"), 30, interval=0.05,
               message="the supervisor's announcement accepted")
    assert "refused to hear" not in cluster.worker_log("host")
    assert cluster.wait_finished(task_id, 60)["status"] == "completed"


def test_a_public_bind_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "DISPATCHER_HOST": "0.0.0.0", "AUTH_REQUIRED": "false",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "DISPATCHER_PORT": "1",
           "DISPATCHER_URL": ""}
    out = subprocess.run([sys.executable, "-m", "dispatcher"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "AUTH_REQUIRED=false" in lines[0] and "0.0.0.0" in lines[0]
    assert not (tmp_path / "tasks.db").exists()  # refused before touching anything


def test_memory_stays_bounded_under_concurrent_maximum_size_requests(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    result = run_load(cluster.port, Config().max_request_bytes, threads=32, rounds=2)
    assert set(result.statuses) <= {"201", "400", "413", "503"}, result.statuses
    assert result.statuses["503"] > 0 and result.statuses["413"] > 0  # the budget did refuse
    assert result.statuses["201"] > 0
    # Generous: each parse of a maximum-size body holds the process (seconds on a loaded box).
    assert result.health_failures == 0 and result.health_max < 30
    peak = peak_rss_mib(cluster.dispatcher.pid)  # type: ignore[union-attr]
    assert peak < 300, f"dispatcher peak RSS {peak:.0f} MiB"
    assert cluster.stats()["tasks"]["total"] == result.statuses["201"]
