"""Run this project and its peers on the same workloads, side by side, and report.

    python -m benchmarks.compare [--quick] [--repeats 3] [--project-root DIR] [--only drain,...]

Each workload runs every system once per repeat, in an order rotated between repeats, so slow
phases of a noisy machine spread over all systems. Writes benchmarks/results/<stamp>.json,
bar charts, and prints a table of the figures against the performance targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import charts, kernels, ours_workloads, targets
from benchmarks.common import HARNESS_ROOT, BenchError, fsync_probe_ms, median
from benchmarks.ours import OurPgQueue, OurQueue
from benchmarks.peers.adapters import all_peers
from benchmarks.peers.pg_adapters import pg_peers
from benchmarks.pg import PG_SYSTEMS
from benchmarks.systems import QueueSystem, run_drain, run_roundtrip

WORKLOADS = ("drain", "roundtrip", "cross_roundtrip", "submission", "big_queue", "big_queue_pg",
             "kernels",
             "scaling")
QUEUE_WORKLOADS = {"drain", "roundtrip", "cross_roundtrip"}
"""The workloads that run peers (cross_roundtrip runs ours-pg only, when it is selected)."""
RESULTS_DIR = HARNESS_ROOT / "benchmarks" / "results"
CHARTS_DIR = HARNESS_ROOT / "docs" / "images"


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``quick()`` is small enough for a test."""

    drain_tasks: int = 5000
    roundtrip_samples: int = 200
    roundtrip_warmup: int = 20
    submission_tasks: int = 50_000
    big_pending: int = 1_000_000
    small_pending: int = 1_000
    claim_samples: int = 300
    sieve_limit: int = 10**9
    sieve_window_end: int = 10**11
    trial_limit: int = 10**7
    scaling_tasks: int = 8
    scaling_limit: int = 10**10  # ~2 s per task with the C sieve: compute dominates

    @classmethod
    def quick(cls) -> "Sizes":
        """Tiny sizes: the whole run takes well under a minute."""
        return cls(drain_tasks=300, roundtrip_samples=30, roundtrip_warmup=3,
                   submission_tasks=3000, big_pending=20_000, small_pending=1000,
                   claim_samples=40, sieve_limit=10**7, sieve_window_end=10**9,
                   trial_limit=10**5, scaling_tasks=2, scaling_limit=10**7)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per system (3; quick: 1)")
    parser.add_argument("--project-root", type=Path, default=HARNESS_ROOT,
                        help="the checkout of this project to measure (default: this repo)")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads of {', '.join(WORKLOADS)}")
    parser.add_argument("--peers", default="all",
                        help="'all', 'none', 'pg' (ours-pg and the PostgreSQL peers), or names: "
                             "huey-sqlite,huey-redis,celery,rq,rq-simple,dramatiq,ours-pg,"
                             "procrastinate,pgqueuer,pg-bare")
    parser.add_argument("--output", type=Path, help="result JSON (default results/<stamp>.json)")
    parser.add_argument("--charts-dir", type=Path, default=CHARTS_DIR,
                        help="where bench_*.png go (default docs/images)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--workdir", type=Path,
                        help="keep databases and process logs here (default: a temp dir)")
    parser.add_argument("--primesieve", default="primesieve", help="primesieve CLI to compare")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.project_root = args.project_root.resolve()
    try:
        args.peer_names = peer_names(args.peers, [p.name for p in candidates(args.project_root)])
    except ValueError as exc:
        parser.error(f"--peers: {exc}")
    return args


def candidates(project_root: Path) -> list[QueueSystem]:
    """Every system that can run beside ours, in the order of the results tables."""
    return [OurPgQueue(project_root), *all_peers(), *pg_peers()]


def peer_names(spec: str, known: list[str]) -> list[str]:
    """The names ``--peers`` selects: 'all', 'none', 'pg' and names, comma-separated."""
    wanted: set[str] = set()
    for item in filter(None, spec.split(",")):
        if item == "all":
            wanted.update(known)
        elif item == "pg":
            wanted.update(PG_SYSTEMS)
        elif item in known:
            wanted.add(item)
        elif item != "none":
            raise ValueError(f"unknown peer {item!r} (known: all, none, pg, {', '.join(known)})")
    return [name for name in known if name in wanted]


def select_peers(names: list[str], project_root: Path,
                 ) -> tuple[list[QueueSystem], dict[str, str]]:
    """The peers asked for that can run here, and why the others cannot."""
    ready, skipped = [], {}
    for peer in candidates(project_root):
        if peer.name not in names:
            continue
        reason = peer.unavailable()
        if reason:
            skipped[peer.name] = reason
            print(f"skipping {peer.name}: {reason}", file=sys.stderr)
        else:
            ready.append(peer)
    return ready, skipped


def rotated(items: list[Any], shift: int) -> list[Any]:
    """items rotated left by shift (a different system goes first in each repeat)."""
    shift %= max(len(items), 1)
    return items[shift:] + items[:shift]


def compare_systems(name: str, systems: list[QueueSystem], repeats: int, workdir: Path,
                    run: Callable[[QueueSystem, Path], dict[str, Any]], key: str) -> dict[str, Any]:
    """Run ``run`` for every system ``repeats`` times, alternating; the median of ``key``."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    errors: dict[str, str] = {}
    for repeat in range(repeats):
        for system in rotated(systems, repeat):
            if system.name in errors:
                continue
            print(f"[{name}] repeat {repeat + 1}/{repeats}: {system.name} ...", file=sys.stderr,
                  flush=True)
            try:
                result = run(system, workdir)
            except Exception as exc:  # one broken peer must not end the comparison
                logging.getLogger(__name__).debug("%s failed", system.name, exc_info=True)
                errors[system.name] = f"{type(exc).__name__}: {exc}"
                print(f"[{name}] {system.name} failed: {errors[system.name]}", file=sys.stderr)
                continue
            runs[system.name].append(result)
            print(f"[{name}]   {key} = {result[key]:.1f}", file=sys.stderr, flush=True)
    summary = {
        system: {"median": median([r[key] for r in results]), "runs": results}
        for system, results in runs.items() if results
    }
    return {"metric": key, "systems": summary, "errors": errors,
            "settings": {s.name: s.settings for s in systems}}


def run_drain_all(systems: list[QueueSystem], sizes: Sizes, repeats: int,
                  workdir: Path) -> dict[str, Any]:
    """Workload 1: drain throughput."""
    result = compare_systems("drain", systems, repeats, workdir,
                             lambda s, w: run_drain(s, w, sizes.drain_tasks), "tasks_per_second")
    # The drain includes the workers' start-up; these say how much of it that was.
    for summary in result["systems"].values():
        for key in ("steady_tasks_per_second", "first_result_seconds"):
            summary[key] = median([r[key] for r in summary["runs"]])
    return {"tasks": sizes.drain_tasks, "workers": 2, **result}


def run_roundtrip_all(systems: list[QueueSystem], sizes: Sizes, repeats: int,
                      workdir: Path, label: str = "roundtrip") -> dict[str, Any]:
    """Workload 2: idle round trip."""
    result = compare_systems(
        label, systems, repeats, workdir,
        lambda s, w: run_roundtrip(s, w, sizes.roundtrip_samples, sizes.roundtrip_warmup),
        "p50_ms")
    for summary in result["systems"].values():
        for pct in ("p90_ms", "p99_ms", "mean_ms"):
            summary[pct] = median([r[pct] for r in summary["runs"]])
    return {"samples": sizes.roundtrip_samples, **result}


def run_cross_roundtrip(project_root: Path, sizes: Sizes, repeats: int,
                        workdir: Path) -> dict[str, Any]:
    """ours-pg with two dispatchers on one database: submit through A, wait through B."""
    result = run_roundtrip_all([OurPgQueue(project_root, cross=True)], sizes, repeats, workdir,
                               "cross_roundtrip")
    return {"dispatchers": 2, **result}


def git_commit(root: Path) -> str | None:
    """The checked-out commit of root (with '+dirty' when it has changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def metadata(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """Where, when and on what the benchmark ran."""
    import psutil

    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0], "project_root": str(args.project_root),
        "project_commit": git_commit(args.project_root), "harness_commit": git_commit(HARNESS_ROOT),
        "quick": args.quick, "repeats": args.repeats, "sizes": asdict(sizes),
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_workloads(args: argparse.Namespace, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Every workload asked for; a workload that fails is recorded, not fatal."""
    only = args.only.split(",")
    ours = OurQueue(args.project_root)
    results: dict[str, Any] = {}
    peers, skipped = (select_peers(args.peer_names, args.project_root)
                      if QUEUE_WORKLOADS & set(only) else ([], {}))
    systems: list[QueueSystem] = [ours, *peers]
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "drain": lambda: run_drain_all(systems, sizes, args.repeats, workdir),
        "roundtrip": lambda: run_roundtrip_all(systems, sizes, args.repeats, workdir),
        "cross_roundtrip": lambda: run_cross_roundtrip(args.project_root, sizes, args.repeats,
                                                       workdir),
        "submission": lambda: ours_workloads.submission(
            args.project_root, workdir, sizes.submission_tasks, args.repeats),
        "big_queue": lambda: ours_workloads.big_queue(
            args.project_root, workdir, sizes.small_pending, sizes.big_pending,
            sizes.claim_samples, args.repeats),
        "big_queue_pg": lambda: ours_workloads.big_queue(
            args.project_root, workdir, sizes.small_pending, sizes.big_pending,
            sizes.claim_samples, args.repeats, postgres=True),
        "kernels": lambda: kernels.run_all(
            args.project_root, sizes.sieve_limit, sizes.sieve_window_end, sizes.trial_limit,
            args.repeats, args.primesieve),
        "scaling": lambda: ours_workloads.scaling(
            args.project_root, workdir, sizes.scaling_tasks, sizes.scaling_limit, args.repeats),
    }
    for name in WORKLOADS:
        if name not in only:
            continue
        if name == "cross_roundtrip" and "ours-pg" not in [p.name for p in peers]:
            results[name] = {"skipped": skipped.get("ours-pg", "ours-pg is not in --peers")}
            print(f"skipping cross_roundtrip: {results[name]['skipped']}", file=sys.stderr)
            continue
        started = time.monotonic()
        try:
            results[name] = steps[name]()
        except (BenchError, OSError, ValueError, RuntimeError,
                subprocess.SubprocessError) as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
        if name in ("drain", "roundtrip"):
            results[name]["skipped"] = skipped
    return results


def run_in(args: argparse.Namespace, sizes: Sizes, workdir: Path,
           report: dict[str, Any]) -> None:
    """Run the workloads in workdir, with the disk's fsync latency before and after."""
    # SQLite stores (ours, Huey-SQLite) commit with fsync: their figures move with the disk.
    # The machine may be shared: its load average says how much else competed for the CPUs.
    report["meta"]["fsync_ms_before"] = fsync_probe_ms(workdir)
    report["meta"]["load_average_before"] = os.getloadavg()
    report["results"] = run_workloads(args, sizes, workdir)
    report["meta"]["fsync_ms_after"] = fsync_probe_ms(workdir)
    report["meta"]["load_average_after"] = os.getloadavg()


def main(argv: list[str] | None = None) -> int:
    """Run, write the JSON and charts, print the table."""
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    report: dict[str, Any] = {"meta": metadata(args, sizes)}
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_in(args, sizes, args.workdir.resolve(), report)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            run_in(args, sizes, Path(tmp), report)
    report["targets"] = targets.evaluate(report["results"])
    output = args.output or RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_charts:
        report["charts"] = [str(p) for p in charts.draw_all(report, args.charts_dir)]
        output.write_text(json.dumps(report, indent=2) + "\n")
    print(targets.format_report(report))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
