#!/usr/bin/env python3
"""What worker failures cost: SIGKILL K workers mid-run; measure detection, reassignment, rework.

Each run starts a fresh dispatcher (temp database, free port) and --workers workers, submits the
workload in one batch, SIGKILLs --dead-workers of them when the workload's progress reaches the
--kill-at fraction(s) (busy workers first, chosen with --seed), waits for every task, and stops
everything it started. Results go to <output-dir>/recovery_<K>.json; the 0-failure baseline
(recovery_0.json) is run first when it is missing or was made with another workload.

    python analysis/recovery_time_analysis.py --dead-workers 0      # baseline
    python analysis/recovery_time_analysis.py --dead-workers 2
    python analysis/recovery_time_analysis.py --dead-workers 4 --kill-at 0.3,0.6 --seed 7
    python analysis/recovery_time_analysis.py --quick --output-dir /tmp/recovery

Killed workers stay dead (the survivors finish the work), unless --restart-killed is given or
every worker would be dead (K >= --workers): then each killed worker is replaced by a new worker
id as soon as the dispatcher has declared it dead, as a process supervisor would do.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import require_venv

require_venv()

from analysis.cluster_watcher import AttemptTrace, ClusterWatcher  # noqa: E402
from analysis.common import (  # noqa: E402
    RESULTS_DIR, CpuMeter, cluster_pids, cores, describe, effective_config, fmt, format_table,
    machine_info, parse_count, parse_fraction_list, pick, prime_workload, read_json,
    running_cluster, stop_on_sigterm, task_timings, wait_all, worker_ids, write_json,
)
from shared.cluster import LocalCluster, WaitTimeout, wait_until  # noqa: E402

DEFAULTS = {"dead_workers": 0, "workers": 8, "num_tasks": 24, "task_size": 10**10,
            "kill_at": [0.5], "repeats": 3, "checkpoint_interval": None}
QUICK = {"dead_workers": 1, "workers": 2, "num_tasks": 4, "task_size": 2 * 10**9,
         "kill_at": [0.3], "repeats": 1, "checkpoint_interval": 0.3}


@dataclass
class Kill:
    """One SIGKILL: whom, when (epoch), at which workload progress, and its replacement."""

    worker_id: str
    at: float
    progress: float
    heartbeat_age_seconds: float | None
    detected_seconds: float | None = None
    replaced_by: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; --quick changes the defaults of flags not given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dead-workers", type=parse_count, help="workers to SIGKILL (default 0)")
    parser.add_argument("--workers", type=parse_count, help="workers per run (default 8)")
    parser.add_argument("--num-tasks", type=parse_count, help="tasks per run (default 24)")
    parser.add_argument("--task-size", type=parse_count, help="prime limit per task (default 1e10)")
    parser.add_argument("--algorithm", choices=("sieve", "trial_division"), default="sieve")
    parser.add_argument("--kill-at", type=parse_fraction_list,
                        help="workload progress fraction(s) at which to kill, e.g. 0.3,0.6; "
                             "K is split over them (default 0.5)")
    parser.add_argument("--seed", type=int, default=1, help="chooses the victims (default 1)")
    parser.add_argument("--repeats", type=parse_count, help="runs (default 3)")
    parser.add_argument("--restart-killed", action="store_true",
                        help="replace each killed worker once it is declared dead "
                             "(always on when K >= --workers)")
    parser.add_argument("--checkpoint-interval", type=float,
                        help="CHECKPOINT_INTERVAL for the cluster (default: from .env, 2 s)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help="where recovery_<K>.json go (default analysis/results)")
    parser.add_argument("--rerun-baseline", action="store_true",
                        help="run the 0-failure baseline again even if it exists")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait for one run's tasks (default 1800)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 2 workers, 1 killed, 4 tasks, 1 repeat")
    args = parser.parse_args(argv)
    for key, default in DEFAULTS.items():
        setattr(args, key, pick(getattr(args, key), args.quick, QUICK[key], default))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.restart_killed = args.restart_killed or args.dead_workers >= args.workers
    return args


def cluster_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment overrides for the cluster's processes."""
    if args.checkpoint_interval is None:
        return {}
    return {"CHECKPOINT_INTERVAL": str(args.checkpoint_interval)}


def workload_key(args: argparse.Namespace) -> dict[str, Any]:
    """What a baseline must share with a failure run to be comparable."""
    config = effective_config(cluster_env(args))
    return {"workers": args.workers, "num_tasks": args.num_tasks, "task_size": args.task_size,
            "algorithm": args.algorithm, "checkpoint_interval": config.checkpoint_interval,
            "heartbeat_interval": config.heartbeat_interval,
            "heartbeat_timeout": config.heartbeat_timeout,
            "monitor_interval": config.monitor_interval}


def kill_plan(dead: int, points: list[float]) -> list[tuple[float, int]]:
    """K kills spread over the progress points: (point, how many)."""
    share, extra = divmod(dead, len(points))
    plan = [(p, share + (i < extra)) for i, p in enumerate(points)]
    return [(p, n) for p, n in plan if n > 0]


# -- one run ------------------------------------------------------------------------------

class RecoveryRun:
    """One run: a cluster, a watcher, the kills at their progress points, the replacements."""

    def __init__(self, args: argparse.Namespace, dead: int, repeat: int) -> None:
        self.args = args
        self.dead = dead
        self.rng = random.Random(f"{args.seed}/{dead}/{repeat}")
        self.alive = worker_ids(args.workers)
        self.next_id = args.workers + 1
        self.kills: list[Kill] = []
        self.meter = CpuMeter()
        config = effective_config(cluster_env(args))
        self.detect_timeout = 5 * config.heartbeat_timeout + 10
        self.checkpoint_interval = config.checkpoint_interval

    def execute(self, label: str) -> dict[str, Any]:
        """Run the workload with the planned kills; return the measurements."""
        workload = prime_workload(self.args.num_tasks, self.args.task_size, self.args.algorithm)
        with running_cluster(self.alive, cluster_env(self.args)) as cluster, \
                ClusterWatcher(cluster.urls, len(workload),
                               token=cluster.env.get("DISPATCHER_TOKEN", "")) as watcher:
            self.meter = CpuMeter(cluster_pids(cluster))
            task_ids = cluster.client.submit_many(workload)
            for point, count in kill_plan(self.dead, self.args.kill_at):
                self._kill_at(cluster, watcher, point, count)
            views = wait_all(cluster, task_ids, self.args.timeout, desc=label)
            reclaims = cluster.client.stats()["reclaims"]
            cpu = self.meter.report()
            watcher.stop()
        return self._measurements(views, watcher, reclaims, cpu)

    def _kill_at(self, cluster: LocalCluster, watcher: ClusterWatcher, point: float,
                 count: int) -> None:
        try:
            wait_until(lambda: watcher.overall_progress() >= point, self.args.timeout,
                       message=f"workload progress {point:.0%}")
        except WaitTimeout:
            print(f"  progress never reached {point:.0%}: no kill there", flush=True)
            return
        # Progress is seen when a checkpoint lands; killing right then would always lose
        # almost nothing. A random phase within one checkpoint interval models a crash.
        time.sleep(self.rng.uniform(0, self.checkpoint_interval))
        fresh = [self._kill_one(cluster, watcher, v) for v in self._victims(watcher, count)]
        self.kills += fresh
        if self.args.restart_killed:
            self._replace(cluster, watcher, fresh)

    def _victims(self, watcher: ClusterWatcher, count: int) -> list[str]:
        held = watcher.holders()
        busy = sorted(w for w in self.alive if held.get(w))
        idle = sorted(w for w in self.alive if not held.get(w))
        self.rng.shuffle(busy)
        self.rng.shuffle(idle)
        return (busy + idle)[:count]

    def _kill_one(self, cluster: LocalCluster, watcher: ClusterWatcher, victim: str) -> Kill:
        progress = watcher.overall_progress()
        last_beat = watcher.last_heartbeat.get(victim)
        self.meter.freeze(cluster.workers[victim].pid)
        at = time.time()
        cluster.kill_worker(victim)
        self.alive.remove(victim)
        held = watcher.holders().get(victim, [])
        print(f"  progress {progress:.0%}: SIGKILL {victim} (holding task(s) {held or 'none'})",
              flush=True)
        return Kill(victim, at, progress, at - last_beat if last_beat else None)

    def _replace(self, cluster: LocalCluster, watcher: ClusterWatcher, kills: list[Kill]) -> None:
        victims = [k.worker_id for k in kills]
        wait_until(lambda: all(watcher.is_dead(v) for v in victims), self.detect_timeout,
                   message=f"dispatcher to declare {victims} dead")
        for kill in kills:
            kill.replaced_by = f"worker-{self.next_id}"
            self.next_id += 1
            self.meter.track(cluster.start_worker(kill.replaced_by).pid)
            self.alive.append(kill.replaced_by)
            print(f"  {kill.worker_id} declared dead: started {kill.replaced_by}", flush=True)

    def _measurements(self, views: list[dict[str, Any]], watcher: ClusterWatcher,
                      reclaims: dict[str, int], cpu: dict[str, float]) -> dict[str, Any]:
        traces = watcher.traces()
        by_id = {v["task_id"]: v for v in views}
        events = []
        for kill in self.kills:
            mine = [killed_task_event(kill, trace, traces, by_id[trace.task_id])
                    for trace in traces
                    if trace.worker_id == kill.worker_id and trace.last_seen >= kill.at]
            _detection(kill, watcher.dead_seen.get(kill.worker_id), mine)
            events += mine
        return {"kills": [asdict(k) for k in self.kills], "killed_tasks": events,
                "reclaims": reclaims, "cpu": cpu,
                "watcher": {"polls": watcher.polls, "errors": watcher.errors},
                **task_timings(views)}


def _detection(kill: Kill, dead_seen: float | None, events: list[dict[str, Any]]) -> None:
    """First evidence that the dispatcher noticed: /stats shows the worker dead, or one of its
    tasks already runs elsewhere (both happen in one sweep; whichever poll saw it first)."""
    evidence = [e["reassigned_seconds"] for e in events if e["reassigned_seconds"] is not None]
    if dead_seen is not None:
        evidence.append(dead_seen - kill.at)
    kill.detected_seconds = min(evidence) if evidence else None
    for event in events:
        event["detected_seconds"] = kill.detected_seconds


def killed_task_event(kill: Kill, trace: AttemptTrace, traces: list[AttemptTrace],
                      final: dict[str, Any]) -> dict[str, Any]:
    """What one killed task cost: detection, reassignment, and the work done again."""
    cp_time, cp_progress = trace.checkpoint_before(kill.at)
    following = [t for t in traces if t.task_id == trace.task_id and t.attempt > trace.attempt]
    successor = min(following, key=lambda t: t.attempt) if following else None
    if successor is not None and successor.first_progress > cp_progress:
        # The next attempt resumed from a checkpoint saved just before the kill that the
        # watcher saw only after it (under load a poll can lag): nothing, or one poll, lost.
        cp_time, cp_progress = kill.at, successor.first_progress
    return {
        "task_id": trace.task_id,
        "worker_id": kill.worker_id,
        "attempt": trace.attempt,
        "kill_at": kill.at,
        "checkpoint_progress_at_kill": cp_progress,
        "checkpoint_age_seconds": kill.at - cp_time,
        "detected_seconds": None,
        "reassigned_seconds": successor.first_seen - kill.at if successor else None,
        "new_worker_id": successor.worker_id if successor else final["worker_id"],
        "resumed_from_progress": successor.first_progress if successor else None,
        "redone_seconds_from_elapsed": _redone_from_elapsed(kill, trace, successor, final),
        "finished_after_kill_seconds": final["finished_at"] - kill.at,
        "final_attempt": final["attempt"],
    }


def _redone_from_elapsed(kill: Kill, trace: AttemptTrace, successor: AttemptTrace | None,
                         final: dict[str, Any]) -> float | None:
    """Time both attempts held the task minus the time the result accounts for."""
    result = final.get("result") or {}
    if successor is None or final["attempt"] != successor.attempt:
        return None
    if "elapsed_seconds" not in result:
        return None
    busy = (kill.at - trace.first_seen) + (final["finished_at"] - successor.first_seen)
    return busy - result["elapsed_seconds"]


# -- many runs, files, summaries ----------------------------------------------------------

def run_series(args: argparse.Namespace, dead: int) -> list[dict[str, Any]]:
    """Every repeat with ``dead`` kills."""
    runs = []
    for repeat in range(args.repeats):
        label = f"{dead} dead of {args.workers}, repeat {repeat + 1}/{args.repeats}"
        print(f"{label}: starting", flush=True)
        run = {"repeat": repeat, **RecoveryRun(args, dead, repeat).execute(label)}
        runs.append(run)
        print(f"{label}: {run['wall_seconds']:.2f} s, {len(run['killed_tasks'])} task(s) "
              f"interrupted; CPU: ours {run['cpu']['ours_percent']}%, others "
              f"{run['cpu']['others_percent']}%", flush=True)
    return runs


def summarize(runs: list[dict[str, Any]], baseline: dict[str, Any]) -> dict[str, Any]:
    """Time, overhead against the baseline (means, and fastest runs), per-killed-task figures."""
    wall = describe([r["wall_seconds"] for r in runs])
    events = [e for r in runs for e in r["killed_tasks"]]
    overhead = wall["mean"] - baseline["mean"]
    best = wall["min"] - baseline["min"]
    return {
        "wall_seconds": wall,
        "tasks_per_second": describe([r["tasks_per_second"] for r in runs]),
        "baseline_wall_seconds": baseline["mean"],
        "baseline_best_wall_seconds": baseline["min"],
        "overhead_seconds": overhead,
        "overhead_percent": 100 * overhead / baseline["mean"],
        "overhead_seconds_best": best,
        "overhead_percent_best": 100 * best / baseline["min"],
        "overhead_seconds_per_run": [r["wall_seconds"] - baseline["mean"] for r in runs],
        "killed_tasks_per_run": describe([len(r["killed_tasks"]) for r in runs]),
        "detected_seconds": describe([k["detected_seconds"] for r in runs for k in r["kills"]]),
        "reassigned_seconds": describe([e["reassigned_seconds"] for e in events]),
        "checkpoint_age_seconds": describe([e["checkpoint_age_seconds"] for e in events]),
        "redone_seconds_from_elapsed": describe([e["redone_seconds_from_elapsed"] for e in events]),
        "extra_attempts_per_run": describe([sum(r["attempts"]) - len(r["attempts"]) for r in runs]),
        "cpu_ours_percent": describe([r["cpu"]["ours_percent"] for r in runs]),
        "cpu_others_percent": describe([r["cpu"]["others_percent"] for r in runs]),
    }


def make_document(args: argparse.Namespace, dead: int, runs: list[dict[str, Any]],
                  baseline: dict[str, Any]) -> dict[str, Any]:
    """The JSON written to recovery_<K>.json."""
    return {
        "kind": "recovery",
        "version": 1,
        "dead_workers": dead,
        "machine": args.machine,
        "workload": workload_key(args),
        "config": {"dead_workers": dead, "kill_at": args.kill_at, "seed": args.seed,
                   "repeats": args.repeats, "restart_killed": args.restart_killed,
                   "quick": args.quick},
        "runs": runs,
        "summary": summarize(runs, baseline),
    }


def ensure_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Wall times with 0 failures for this workload, from recovery_0.json or a new run."""
    path = args.output_dir / "recovery_0.json"
    if not path.exists() or args.rerun_baseline:
        print(f"no baseline in {path}: running it first (0 dead workers)", flush=True)
        return run_baseline(args)
    document = read_json(path)
    if document.get("workload") != workload_key(args):
        print(f"{path} was made with another workload: running the baseline again", flush=True)
        return run_baseline(args)
    return document["summary"]["wall_seconds"]


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Run with 0 failures, write recovery_0.json, return its wall-time statistics."""
    path = args.output_dir / "recovery_0.json"
    runs = run_series(args, 0)
    wall = describe([r["wall_seconds"] for r in runs])
    write_json(path, make_document(args, 0, runs, wall))
    print(f"wrote {path}")
    return wall


def comparison_table(output_dir: Path, key: dict[str, Any]) -> str:
    """One row per recovery_<K>.json in the directory made with this workload."""
    documents = [read_json(p) for p in sorted(output_dir.glob("recovery_*.json"))]
    documents = sorted((d for d in documents if d.get("workload") == key),
                       key=lambda d: d["dead_workers"])
    headers = ["dead workers", "time (s)", "± std", "best (s)", "overhead (s)", "overhead",
               "overhead, best runs", "tasks hit/run", "detection (s)",
               "reassigned (s) mean/max", "since checkpoint (s)", "redone (s)", "CPU ours",
               "CPU others"]
    return format_table(headers, [_table_row(d) for d in documents])


def _table_row(document: dict[str, Any]) -> list[str]:
    s = document["summary"]
    return [str(document["dead_workers"]), fmt(s["wall_seconds"]["mean"]),
            fmt(s["wall_seconds"]["std"]), fmt(s["wall_seconds"]["min"]),
            fmt(s["overhead_seconds"]), fmt(s["overhead_percent"], 1, "%"),
            f"{fmt(s.get('overhead_seconds_best'))} s ({fmt(s.get('overhead_percent_best'), 1)}%)",
            fmt(s["killed_tasks_per_run"]["mean"], 1),
            fmt(s["detected_seconds"]["mean"]),
            f"{fmt(s['reassigned_seconds']['mean'])}/{fmt(s['reassigned_seconds']['max'])}",
            fmt(s["checkpoint_age_seconds"]["mean"]), fmt(s["redone_seconds_from_elapsed"]["mean"]),
            fmt(s["cpu_ours_percent"]["mean"], 0, "%"),
            fmt(s["cpu_others_percent"]["mean"], 0, "%")]


def main(argv: list[str] | None = None) -> int:
    """Run the recovery analysis for one K (and its baseline when needed)."""
    args = parse_args(argv)
    args.machine = machine_info()
    stop_on_sigterm()
    key = workload_key(args)
    print(f"recovery: {args.dead_workers} of {args.workers} workers killed at "
          f"{[f'{p:.0%}' for p in args.kill_at]} progress, {args.num_tasks} x primes "
          f"{args.algorithm} up to {args.task_size:,}, {args.repeats} repeat(s), "
          f"checkpoint every {key['checkpoint_interval']} s, dead after "
          f"{key['heartbeat_timeout']} s; {cores()} CPU cores"
          + ("; killed workers are replaced" if args.restart_killed else ""), flush=True)
    try:
        if args.dead_workers == 0:
            run_baseline(args)
        else:
            baseline = ensure_baseline(args)
            path = args.output_dir / f"recovery_{args.dead_workers}.json"
            runs = run_series(args, args.dead_workers)
            write_json(path, make_document(args, args.dead_workers, runs, baseline))
            print(f"wrote {path}")
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    print(comparison_table(args.output_dir, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
