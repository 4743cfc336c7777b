"""The worker supervisor: N workers per command, dead ones restarted, stopped warm, no leftovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shared.cluster import LocalCluster, wait_until
from shared.config import REPO_ROOT
from tests.conftest import ClusterFactory

RESTART = re.compile(r"restarting worker (\S+) in ([\d.]+) s")


SQLITE_ONLY = pytest.mark.parametrize("cluster_backend", ["sqlite"])
"""For the tests of the supervisor alone (the store makes no difference to them)."""


def alive_workers(cluster: LocalCluster) -> set[str]:
    return {w["worker_id"] for w in cluster.stats()["workers"]["details"] if w["alive"]}


def gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def new_child_pid(cluster: LocalCluster, name: str, old: int | None) -> int | None:
    pid = cluster.child_pid(name)
    return pid if pid is not None and pid != old and not gone(pid) else None


def test_children_get_derived_names_and_a_killed_one_restarts_and_resumes(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.3")
    sup = cluster.start_supervisor("host", 3)
    wait_until(lambda: alive_workers(cluster) == {"host-1", "host-2", "host-3"}, 60,
               interval=0.1, message="three supervised workers in /stats")
    task_id = cluster.submit("sleep", {"seconds": 3}, max_attempts=5)
    view = wait_until(lambda: (v := cluster.task(task_id))["progress"] > 0 and v, 30,
                      message="the task checkpointed")
    victim = view["worker_id"]
    pid = cluster.child_pid(victim)
    assert pid in {p.pid for p in psutil.Process(sup.pid).children()}
    os.kill(pid, signal.SIGKILL)

    wait_until(lambda: cluster.stats()["reclaims"]["worker_restarted"] >= 1, 30, interval=0.05,
               message="the task requeued as worker_restarted")
    new_pid = wait_until(lambda: new_child_pid(cluster, victim, pid), 30,
                         message="the killed worker restarted")
    done = cluster.wait_finished(task_id, 60)
    assert done["status"] == "completed" and done["attempt"] == 2
    assert done["result"]["resumed_from_seconds"] > 0  # resumed from its checkpoint
    stats = cluster.stats()
    assert stats["reclaims"]["dead_worker"] == 0
    assert {w["worker_id"] for w in stats["workers"]["details"]} == {"host-1", "host-2", "host-3"}
    log = cluster.worker_log("host")
    assert f"worker {victim} (pid {pid}) exited: killed by SIGKILL" in log
    assert f"started worker {victim} (pid {new_pid}), restart 1" in log
    assert f"that worker {victim} died: its tasks are requeued (HTTP 200)" in log

    children = [p.pid for p in psutil.Process(sup.pid).children()]
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0
    assert all(gone(p) for p in children)


@SQLITE_ONLY
def test_sigterm_stops_every_worker_warm_and_releases_held_tasks(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(CHECKPOINT_INTERVAL="0.3")
    sup = cluster.start_supervisor("warm", 2)
    ids = [cluster.submit("sleep", {"seconds": 60}) for _ in range(2)]
    wait_until(lambda: all(cluster.task(i)["progress"] > 0 for i in ids), 60,
               message="both tasks running on the two workers")
    children = [p.pid for p in psutil.Process(sup.pid).children()]
    assert len(children) == 2
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=60) == 0
    assert all(gone(p) for p in children)
    assert [cluster.task(i)["status"] for i in ids] == ["pending", "pending"]
    assert cluster.stats()["reclaims"]["released_on_shutdown"] == 2
    assert "restarting worker" not in cluster.worker_log("warm")
    assert not list((Path(cluster.env["RUN_DIR"]) / "children").glob("*.pid"))


@SQLITE_ONLY
def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(
    cluster: LocalCluster,
) -> None:
    cluster.start_supervisor("flaky", 1, "--restart-delay", "0.2", "--restart-delay-max", "5")
    pid = wait_until(lambda: new_child_pid(cluster, "flaky-1", None), 30, message="first start")
    for _ in range(4):
        os.kill(pid, signal.SIGKILL)
        pid = wait_until(lambda old=pid: new_child_pid(cluster, "flaky-1", old), 30,
                         message="restart")
    delays = [float(d) for name, d in RESTART.findall(cluster.worker_log("flaky"))]
    assert len(delays) == 4
    assert delays == sorted(delays) and delays[-1] > delays[1] > 0
    wait_until(lambda: alive_workers(cluster) == {"flaky-1"}, 30, message="registered again")


@SQLITE_ONLY
def test_a_worker_that_cannot_start_stops_the_supervisor_without_restarts(
    cluster: LocalCluster,
) -> None:
    sup = cluster.start_supervisor("bad", 2, "--url", "ftp://nowhere")
    assert sup.wait(timeout=60) == 2
    log = cluster.worker_log("bad")
    assert "configuration error: --url must be a comma-separated list of http(s) URLs" in log
    assert "cannot start (exit code 2: configuration error" in log
    assert log.count("started worker") == 2 and "restarting worker" not in log
    assert alive_workers(cluster) == set()

    env = {**cluster.env, "DISPATCHER_URL": "localhost:5000"}  # no scheme
    out = subprocess.run([sys.executable, "-m", "worker.supervisor", "bad", "--processes", "2"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("configuration error: DISPATCHER_URL") and \
        out.stderr.count("\n") == 1


def _start_script(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(["./start_worker.sh", *args], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _cmdline(pid: int) -> list[str]:
    return psutil.Process(pid).cmdline()


@SQLITE_ONLY
def test_start_worker_script_one_process_stays_plain_and_cleanup_stops_supervisors(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    env = dict(cluster.env)
    run = Path(env["RUN_DIR"])
    started = [
        _start_script(env, tmp_path / "a.log", "plain"),
        _start_script(env, tmp_path / "b.log", "one", "--processes", "1"),
        _start_script({**env, "WORKER_PROCESSES": "2"}, tmp_path / "c.log", "multi"),
    ]
    try:
        wait_until(lambda: alive_workers(cluster) == {"plain", "one", "multi-1", "multi-2"}, 60,
                   interval=0.1, message="workers started by the script")
        # No flag and --processes 1: one plain worker under the given name, as before.
        for proc, name in zip(started[:2], ("plain", "one")):
            assert _cmdline(proc.pid)[-2:] == ["worker", name]
            assert int((run / f"worker-{name}.pid").read_text()) == proc.pid
        supervisor = started[2].pid
        assert _cmdline(supervisor)[-4:] == ["worker.supervisor", "multi", "--processes", "2"]
        children = {p.pid for p in psutil.Process(supervisor).children()}
        assert {int(p.read_text()) for p in (run / "children").glob("*.pid")} == children
        assert len(children) == 2

        cleaned = subprocess.run(["./cleanup.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert cleaned.returncode == 0, cleaned.stderr
        for name in ("plain", "one", "multi"):
            assert f"stopped worker-{name} (pid" in cleaned.stdout, cleaned.stdout
        assert [p.wait(timeout=30) for p in started] == [0, 0, 0]
        assert all(gone(pid) for pid in children)
        assert not list(run.glob("*.pid")) and not list(run.glob("children/*.pid"))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@SQLITE_ONLY
def test_workers_die_with_a_killed_supervisor_and_cleanup_clears_its_files(
    cluster: LocalCluster,
) -> None:
    sup = cluster.start_supervisor("orphan", 2)
    wait_until(lambda: alive_workers(cluster) == {"orphan-1", "orphan-2"}, 60, interval=0.1,
               message="two supervised workers")
    children = [p.pid for p in psutil.Process(sup.pid).children()]
    sup.kill()
    sup.wait(timeout=10)
    wait_until(lambda: all(gone(p) for p in children), 30,
               message="the workers of a SIGKILLed supervisor exit (parent-death signal)")
    cleaned = subprocess.run(["./cleanup.sh"], cwd=REPO_ROOT, env=cluster.env,
                             capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed stale PID file for worker-orphan-1" in cleaned.stdout
    assert not list((Path(cluster.env["RUN_DIR"]) / "children").glob("*.pid"))


@SQLITE_ONLY
def test_a_second_signal_kills_the_workers_at_once(cluster: LocalCluster) -> None:
    sup = cluster.start_supervisor("hard", 2)
    wait_until(lambda: alive_workers(cluster) == {"hard-1", "hard-2"}, 60, interval=0.1,
               message="two supervised workers")
    children = [p.pid for p in psutil.Process(sup.pid).children()]
    os.kill(children[0], signal.SIGSTOP)  # cannot act on the forwarded SIGTERM: never exits
    try:
        sup.send_signal(signal.SIGTERM)
        wait_until(lambda: "supervisor stopping" in cluster.worker_log("hard"), 30,
                   message="the warm stop began")
        wait_until(lambda: gone(children[1]), 30, message="the other worker stopped warm")
        assert sup.poll() is None  # still waiting for the stopped worker
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 1
        assert gone(children[0])
        # (1 or 2: the warm-stopped worker may have exited but not been reaped yet)
        assert re.search(r"second stop signal: killing [12] worker\(s\) now",
                         cluster.worker_log("hard"))
    finally:
        if not gone(children[0]):
            os.kill(children[0], signal.SIGKILL)
