"""Long chaos runs: the worker kill storm, then dispatcher crashes, on real local processes.

    .venv/bin/python analysis/chaos.py --duration 600 --seed 1            # table
    .venv/bin/python analysis/chaos.py --duration 60 --seed 2 --json      # JSON
    .venv/bin/python analysis/chaos.py --scale-out 300 --seed 3           # + PostgreSQL phase

The same scenarios as tests/chaos (tests/support/scenarios.py), run for longer: the storm keeps
the queue topped up with prime tasks of mixed sizes and SIGKILLs a random busy worker every
``--kill-interval`` seconds; the crash phase SIGKILLs the dispatcher at random moments while
clients submit with Idempotency-Key. ``--scale-out SECONDS`` adds a phase with three dispatchers
on a fresh PostgreSQL database (``--postgres`` names the server) and six workers, SIGKILLing
random dispatchers and workers. Every process is started in a temp directory and stopped
by PID when the run ends (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cluster import LocalCluster  # noqa: E402
from tests.support.audit import database  # noqa: E402
from tests.support import postgres  # noqa: E402
from tests.support.scale_out import ScaleOutChaos  # noqa: E402
from tests.support.scenarios import DispatcherCrash, KillStorm, prime_tasks  # noqa: E402

ROWS = [
    ("seconds", "seconds"), ("tasks", "tasks"), ("completed", "completed"),
    ("kills", "kills / crashes"), ("lost", "lost"), ("duplicates", "duplicates"),
    ("attempt_mismatch", "result attempt != final attempt"), ("wrong_results", "wrong results"),
    ("reassign_p50_s", "reassignment p50 (s)"), ("reassign_p99_s", "reassignment p99 (s)"),
    ("reassign_max_s", "reassignment max (s)"), ("idle_kills", "kills with an idle worker"),
    ("idle_reassign_max_s", "  their reassignment max (s)"),
    ("redone_p50_s", "work redone per kill p50 (s)"), ("redone_max_s", "work redone per kill max (s)"),
    ("redone_total_s", "work redone total (s)"), ("acknowledged", "acknowledged submissions (201)"),
    ("retried_keys_answered_200", "retries answered 200 duplicate"),
    ("reassigned_tasks", "tasks with attempt > 1"), ("reclaims_dead_worker", "reclaims: dead_worker"),
    ("reclaims_worker_restarted", "reclaims: worker_restarted"),
    ("reclaims_expired_lease", "reclaims: expired_lease"),
    ("reclaims_returned_unstarted", "reclaims: returned_unstarted"), ("outage_p50_s", "outage p50 (s)"),
    ("outage_max_s", "outage max (s)"), ("outages_with_cached_results", "outages with cached results"),
    ("wrongly_dead", "wrongly-declared-dead workers"), ("taken_from_live", "tasks taken from live workers"),
    ("dispatcher_kills", "dispatcher kills"), ("worker_kills", "worker kills"),
    ("resumed_from_scratch", "reassigned without their checkpoint"),
    ("failover_p50_s", "worker failover p50 (s)"), ("failover_max_s", "worker failover max (s)"),
    ("integrity", "PRAGMA integrity_check"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The script's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120, help="total seconds (half per phase)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kill-interval", type=float, default=2.0)
    parser.add_argument("--scale-out", type=float, default=0, metavar="SECONDS",
                        help="also run the PostgreSQL phase (3 dispatchers, 6 workers) this long")
    parser.add_argument("--postgres", default=postgres.ADMIN_URL,
                        help="PostgreSQL server for that phase (a database is made and dropped)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


STORM_ENV = {"CHECKPOINT_INTERVAL": "0.5", "CRASH_LOOP_LIMIT": "1000"}
"""Random kills can take three workers in a row from one task before its next checkpoint:
not the crash loop the breaker (tested on its own) fails a task for."""


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_storm(workdir: Path, rng: random.Random, seconds: float, workers: int,
              interval: float) -> dict[str, Any]:
    """The kill storm for ``seconds``, the queue kept topped up, then drained and audited."""
    with LocalCluster(workdir, STORM_ENV) as cluster:
        cluster.start_dispatcher()

        def top_up() -> list[dict[str, Any]]:
            with database(cluster.database_url) as db:
                pending = db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'pending'"
                                     ).fetchone()[0]
            # Sometimes let the queue run dry so that kills also happen while workers are idle.
            return prime_tasks(rng, 40) if pending < workers and rng.random() < 0.6 else []

        storm = KillStorm(cluster, rng, workers=workers, interval=interval)
        return storm.run(prime_tasks(rng, 100), storm_seconds=seconds, top_up=top_up,
                         drain_timeout=300).summary()


def run_crashes(workdir: Path, rng: random.Random, seconds: float) -> dict[str, Any]:
    """Dispatcher crashes for ``seconds`` under continuous submissions, then audited."""
    with LocalCluster(workdir, {**STORM_ENV, "BACKOFF_MAX": "1"}) as cluster:
        cluster.start_dispatcher()
        return DispatcherCrash(cluster, rng).run(seconds=seconds, drain_timeout=300).summary()


def run_scale_out(workdir: Path, rng: random.Random, seconds: float, server: str
                  ) -> dict[str, Any]:
    """Three dispatchers on a fresh PostgreSQL database, six workers, kills; then audited."""
    database_url = postgres.create_database(server)
    try:
        env = {**STORM_ENV, "BACKOFF_MAX": "1", "DATABASE_URL": database_url}
        with LocalCluster(workdir, env) as cluster:
            cluster.start_dispatcher()
            return ScaleOutChaos(cluster, rng).run(seconds, drain_timeout=300).summary()
    finally:
        postgres.drop_database(database_url, server)


def table(results: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, one column per scenario."""
    lines = ["| metric | " + " | ".join(r["scenario"] for r in results) + " |",
             "| --- |" + " ---: |" * len(results)]
    for key, label in ROWS:
        if key == "kills":
            cells = [r.get("kills", r.get("crashes")) for r in results]
        else:
            cells = [r.get(key) for r in results]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both phases; exit 1 if anything was lost, duplicated or corrupt."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        storm = run_storm(Path(tmp) / "storm", rng, args.duration / 2, args.workers,
                          args.kill_interval)
        crash = run_crashes(Path(tmp) / "crash", rng, args.duration / 2)
        results = [storm, crash]
        if args.scale_out:
            results.append(run_scale_out(Path(tmp) / "scale-out", rng, args.scale_out,
                                         args.postgres))
    if args.json:
        print(json.dumps({"seed": args.seed, "duration": args.duration, "results": results},
                         indent=2))
    else:
        print(f"chaos run: --duration {args.duration:g} --seed {args.seed}\n")
        print(table(results))
    bad = any(r["lost"] or r["duplicates"] or r.get("integrity", "ok") != "ok" for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
