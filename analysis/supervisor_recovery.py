#!/usr/bin/env python3
"""What a worker supervisor saves when a worker dies: requeue and reassignment after a SIGKILL.

Each repetition starts a fresh dispatcher (temp SQLite database, free port) and two workers,
either as one supervisor with ``--processes 2`` (``supervised``) or as two plain workers
(``plain``), submits one long ``sleep`` task, waits until it has checkpointed, SIGKILLs the
worker running it and then polls the dispatcher every few milliseconds for:

* ``requeue_seconds``: SIGKILL -> the task is reclaimed: first seen ``pending`` or with a
  higher attempt, or the ``/stats`` reclaims counter of the cause risen (``worker_restarted``
  when the supervisor announced the death, ``dead_worker`` after ``HEARTBEAT_TIMEOUT`` when
  nobody did); the cause is checked at the end of each repetition;
* ``reassign_seconds``: SIGKILL -> the task is ``in-progress`` again with a higher attempt, on
  any worker (the other one, or the restarted one);
* ``restart_seconds`` (supervised only): SIGKILL -> the supervisor has started the new process.

The modes alternate so background load spreads over both. Writes
analysis/results/supervisor_recovery.json (or --output) and prints the medians.

    python analysis/supervisor_recovery.py                  # 5 repetitions of each mode
    python analysis/supervisor_recovery.py --repeats 2 --output /tmp/supervisor_recovery.json
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import require_venv

require_venv()

from analysis.common import (  # noqa: E402
    RESULTS_DIR, alive_workers, describe, effective_config, fmt, format_table, machine_info,
    parse_count, stop_on_sigterm, write_json,
)
from shared.cluster import LocalCluster, wait_until  # noqa: E402

MODES = ("supervised", "plain")
DEFAULT_OUTPUT = RESULTS_DIR / "supervisor_recovery.json"
TASK_SECONDS = 60.0
"""The task outlives every measurement; it is cancelled afterwards."""
POLL_SECONDS = 0.005
ENV = {"CHECKPOINT_INTERVAL": "0.5"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=parse_count, default=5,
                        help="repetitions of each mode (default 5)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSON file to write (default analysis/results/supervisor_recovery.json)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def _start(cluster: LocalCluster, mode: str) -> list[str]:
    if mode == "supervised":
        cluster.start_supervisor("host", 2)
        names = ["host-1", "host-2"]
    else:
        names = ["plain-1", "plain-2"]
        for name in names:
            cluster.start_worker(name)
    wait_until(lambda: alive_workers(cluster) >= set(names), 60, interval=0.05,
               message="two workers alive")
    return names


def _victim_pid(cluster: LocalCluster, mode: str, name: str) -> int:
    if mode == "supervised":
        pid = cluster.child_pid(name)
        assert pid is not None, f"no PID file for {name}"
        return pid
    return cluster.workers[name].pid


def measure_once(mode: str) -> dict[str, Any]:
    """One repetition: start, run a task, SIGKILL its worker, time requeue and reassignment."""
    cause = "worker_restarted" if mode == "supervised" else "dead_worker"
    with tempfile.TemporaryDirectory(prefix="taskqueue-supervisor-") as workdir:
        cluster = LocalCluster(Path(workdir), ENV)
        try:
            cluster.start_dispatcher()
            _start(cluster, mode)
            task_id = cluster.submit("sleep", {"seconds": TASK_SECONDS}, max_attempts=100)
            view = wait_until(lambda: (v := cluster.task(task_id))["progress"] > 0 and v, 60,
                              message="the task checkpointed")
            victim, attempt = view["worker_id"], view["attempt"]
            pid = _victim_pid(cluster, mode, victim)
            before = cluster.stats()["reclaims"][cause]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            if mode == "plain":
                cluster.workers[victim].wait(timeout=10)
            found: dict[str, float] = {}
            deadline = killed + 60
            while len(found) < (3 if mode == "supervised" else 2):
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"{mode}: not recovered within 60 s: {found}")
                if "reassign" not in found:
                    current = cluster.task(task_id)
                    if current["attempt"] > attempt or current["status"] == "pending":
                        found.setdefault("requeue", now - killed)  # (claimed again at once)
                    if current["status"] == "in-progress" and current["attempt"] > attempt:
                        found["reassign"] = now - killed
                        found_on = current["worker_id"]
                if "requeue" not in found and cluster.stats()["reclaims"][cause] > before:
                    found["requeue"] = now - killed
                if mode == "supervised" and "restart" not in found:
                    new_pid = cluster.child_pid(victim)
                    if new_pid is not None and new_pid != pid:
                        found["restart"] = now - killed
                time.sleep(POLL_SECONDS)
            reclaims = cluster.stats()["reclaims"]
            assert reclaims[cause] == before + 1, f"{mode}: expected one {cause} reclaim: {reclaims}"
            cluster.post(f"/task/{task_id}/cancel", {})
        finally:
            cluster.close()
    return {"mode": mode, "killed_worker": victim, "reassigned_to": found_on,
            "requeue_cause": cause, "requeue_seconds": round(found["requeue"], 4),
            "reassign_seconds": round(found["reassign"], 4),
            "restart_seconds": round(found["restart"], 4) if "restart" in found else None}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: describe() of each measured figure."""
    return {mode: {key: describe([r[key] for r in runs if r["mode"] == mode])
                   for key in ("requeue_seconds", "reassign_seconds", "restart_seconds")}
            for mode in MODES}


def main(argv: list[str] | None = None) -> int:
    """Measure, write the JSON document, print the medians."""
    args = parse_args(argv)
    stop_on_sigterm()
    config = effective_config(ENV)
    machine = machine_info()
    runs: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            for mode in MODES:
                run = {"repeat": repeat, **measure_once(mode)}
                runs.append(run)
                print(f"[{len(runs)}/{2 * args.repeats}] {mode}: requeue "
                      f"{run['requeue_seconds']:.3f} s ({run['requeue_cause']}), reassigned "
                      f"{run['reassign_seconds']:.3f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; nothing written", file=sys.stderr)
        return 130
    summary = summarize(runs)
    write_json(args.output, {
        "kind": "supervisor_recovery", "version": 1, "machine": machine,
        "config": {"repeats": args.repeats, "task_seconds": TASK_SECONDS,
                   "heartbeat_interval": config.heartbeat_interval,
                   "heartbeat_timeout": config.heartbeat_timeout,
                   "monitor_interval": config.monitor_interval,
                   "checkpoint_interval": config.checkpoint_interval,
                   "poll_seconds": POLL_SECONDS},
        "runs": runs, "summary": summary,
    })
    rows = [[mode, fmt(summary[mode]["requeue_seconds"]["median"], 3),
             fmt(summary[mode]["reassign_seconds"]["median"], 3),
             fmt(summary[mode]["restart_seconds"]["median"], 3)] for mode in MODES]
    print(format_table(["mode", "requeue (median s)", "reassigned (median s)",
                        "restarted (median s)"], rows))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
