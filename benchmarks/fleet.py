"""How the dispatcher copes with a fleet: hundreds of idle workers, a drain by real workers,
and many client connections. A script that reports figures, not a test (exit 0 either way).

    python -m benchmarks.fleet [--quick] [--only idle,drain,connections] [--project-root DIR]
                               [--env KEY=VALUE ...] [--output FILE]

Writes benchmarks/results/fleet-<stamp>.json (every setting and the raw figures) and prints a
table with the targets marked met or MISS. See benchmarks/README.md, section "Fleet".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks import fleet_workloads
from benchmarks.common import HARNESS_ROOT, BenchError
from benchmarks.compare import RESULTS_DIR, cpu_model, git_commit
from benchmarks.fleet_workloads import Checkout, FleetSizes
from benchmarks.targets import Target, evaluate, get_path
from shared.client import ClientError

WORKLOADS = ("idle", "drain", "connections")

FLEET_TARGETS = (
    Target("idle_heartbeat_p99", "idle: heartbeat p99, ms (a timeout counts as 1 s)",
           lambda r: get_path(r, "idle", "heartbeats", "latency_ms", "p99"), 250, False),
    Target("idle_wrongly_dead", "idle: workers the dispatcher declared dead",
           lambda r: get_path(r, "idle", "wrongly_dead"), 0, False),
    Target("drain_ratio", "drain: wall time / ideal",
           lambda r: get_path(r, "drain", "ratio_to_ideal"), 1.3, False),
    Target("drain_dead_worker_reclaims", "drain: reclaims with cause dead_worker",
           lambda r: get_path(r, "drain", "reclaims", "dead_worker"), 0, False),
    Target("connections_ratio", "connections: tasks/s at most / at fewest connections",
           lambda r: get_path(r, "connections", "rate_ratio"), 0.5, True),
)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,50,200, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("connection counts must be >= 1")
    return levels


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return convert


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; size flags left unset take the (quick) defaults."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny sizes, a few seconds per workload")
    add("--only", default=",".join(WORKLOADS), help="comma-separated: idle,drain,connections")
    add("--project-root", type=Path, default=HARNESS_ROOT,
        help="the checkout whose dispatcher and workers run (with its .venv); default: this repo")
    add("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
        help="extra environment of the dispatcher and workers (repeatable)")
    add("--output", type=Path, help="result JSON (default results/fleet-<stamp>.json)")
    add("--workdir", type=Path, help="keep databases and logs here (default: a temp dir)")
    add("--sim-processes", type=_positive(int), help="simulator / client processes (2)")
    add("--idle-workers", type=_positive(int), help="idle: simulated workers N (300)")
    add("--idle-seconds", type=_positive(float),
        help="idle: seconds measured after registration D (30)")
    add("--ramp-seconds", type=_positive(float),
        help="idle: first beats spread over this many seconds (1)")
    add("--drain-workers", type=_positive(int), help="drain: real worker processes W (100)")
    add("--drain-tasks", type=_positive(int), help="drain: sleep tasks T (2 x W)")
    add("--task-seconds", type=_positive(float), help="drain: seconds per sleep task S (5)")
    add("--connections", type=_levels, help="connections: levels C (10,25,50,100,150,200)")
    add("--connection-seconds", type=_positive(float), help="connections: seconds per level (10)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
    args.project_root = args.project_root.resolve()
    return args


def sizes_from(args: argparse.Namespace) -> FleetSizes:
    """The defaults (or quick sizes) with every size flag given on the command line."""
    sizes = FleetSizes.quick() if args.quick else FleetSizes()
    given = {field.name: getattr(args, field.name, None)
             for field in dataclasses.fields(FleetSizes)}
    return dataclasses.replace(sizes, **{k: v for k, v in given.items() if v is not None})


def raise_open_files_limit() -> tuple[int, int]:
    """Lift our soft limit of open files to the hard one (children inherit it); the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def metadata(args: argparse.Namespace, sizes: FleetSizes) -> dict[str, Any]:
    """Where, when, on what and with which settings the benchmark ran."""
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0], "project_root": str(args.project_root),
        "project_commit": git_commit(args.project_root), "harness_commit": git_commit(HARNESS_ROOT),
        "quick": args.quick, "only": args.only.split(","), "env": dict(args.env),
        "sizes": dataclasses.asdict(sizes), "open_files_limit": raise_open_files_limit(),
        "load_average_before": os.getloadavg(),
    }


def run_workloads(args: argparse.Namespace, sizes: FleetSizes, workdir: Path) -> dict[str, Any]:
    """Every workload asked for; one that fails is recorded, not fatal."""
    checkout = Checkout(args.project_root, workdir, dict(args.env))
    steps: dict[str, Callable[[Checkout, FleetSizes], dict[str, Any]]] = {
        "idle": fleet_workloads.idle, "drain": fleet_workloads.drain,
        "connections": fleet_workloads.connections}
    results: dict[str, Any] = {}
    for name in WORKLOADS:
        if name not in args.only.split(","):
            continue
        started = time.monotonic()
        try:
            results[name] = steps[name](checkout, sizes)
        except (BenchError, ClientError, OSError, ValueError, RuntimeError,
                subprocess.SubprocessError) as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, write the JSON, print the table."""
    args = parse_args(argv)
    sizes = sizes_from(args)
    report: dict[str, Any] = {"meta": metadata(args, sizes)}
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report["results"] = run_workloads(args, sizes, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
            report["results"] = run_workloads(args, sizes, Path(tmp))
    report["meta"]["load_average_after"] = os.getloadavg()
    report["targets"] = evaluate(report["results"], FLEET_TARGETS, met_word="met")
    output = args.output or RESULTS_DIR / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nresults: {output}")
    return 0


# -- the printed table ------------------------------------------------------------------------


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(lat: dict[str, Any], keys: tuple[str, ...] = ("p50", "p90", "p99", "max")) -> str:
    return "  ".join(f"{k} {_n(lat.get(k))}" for k in keys) + " ms"


def _idle_lines(r: dict[str, Any]) -> list[str]:
    s, hb, cl, st = r["settings"], r["heartbeats"], r["claims"], r["stats"]
    reg, d, sims, w = r["registration"], r["dispatcher"], r["simulators"], r["window"]
    return [
        f"\nidle: {s['workers']} simulated workers in {s['simulator_processes']} processes, "
        f"{s['seconds']:g} s after all registered (registration {reg['seconds']} s, "
        f"{'complete' if reg['complete'] else 'INCOMPLETE: ' + str(reg['registered'])})",
        f"  heartbeats     {_n(hb['sent'])} sent, {_n(hb['answered'])} answered; "
        + _ms(hb["latency_ms"]),
        f"                 failed or timed out {hb['failed_or_timed_out']} (timeouts "
        f"{hb['timed_out']}), answered after 1 s {hb['answered_after_1s']}, longest gap "
        f"{hb['longest_gap_s']} s, workers with a gap > {hb['heartbeat_timeout_s']:g} s: "
        f"{hb['workers_with_gap_over_timeout']}",
        f"  claims         {_n(cl['round_trips'])} round trips ({cl['per_worker_per_second']} per "
        f"worker per s), failed {cl['failed']}; " + _ms(cl["latency_ms"], ("p50", "p99", "max")),
        f"  GET /stats     {st['answered']}/{st['samples']} answered, timeouts {st['timeouts']}; "
        + _ms(st["latency_ms"], ("p50", "p99", "max")),
        f"  workers        alive at end {r['final']['alive']}, dead at end {r['final']['dead']}, "
        f"declared dead in the window {r['wrongly_dead']}, reclaims.dead_worker "
        f"{r['final']['reclaims'].get('dead_worker')}",
        f"  dispatcher     CPU {d['cpu_seconds']} s ({d['cpu_cores']} cores), peak RSS "
        f"{d['peak_rss_mib']} MiB, peak threads {d['peak_threads']}",
        f"  simulators     CPU {sims['cpu_seconds']} s ({sims['cpu_cores']} cores, busiest "
        f"process {sims['busiest_process_cores']}), schedule lag p99 "
        f"{_n(hb['simulator_lag_ms']['p99'])} ms; connections opened (whole run) "
        f"{sims['connections_opened']}",
        _machine_line(w),
    ]


def _machine_line(window: dict[str, Any]) -> str:
    cores = window["cpu_cores"]
    return (f"  machine        busy {cores['machine_busy']} of {window['cpu_count']} cores; "
            f"other processes {cores['others']} cores")


def _drain_lines(r: dict[str, Any]) -> list[str]:
    s, st, d = r["settings"], r["startup"], r["dispatcher"]
    return [
        f"\ndrain: {s['workers']} worker processes, {s['tasks']} sleep tasks of "
        f"{s['task_seconds']:g} s in one batch (ideal {s['ideal_seconds']:g} s)",
        f"  start-up       {st['seconds']} s until {st['alive']} alive"
        f"{'' if st['all_alive'] else ' (NOT all)'}; worker RSS {st['worker_rss_mib_mean']} MiB "
        f"each, {st['worker_rss_mib_total']} MiB in all",
        f"  drain          {r['seconds']} s = {r['ratio_to_ideal']} x ideal (submission "
        f"{r['submit_seconds']} s; the client saw the end after {r['seen_by_client_seconds']} s)",
        f"  tasks          {r['statuses']}; attempts {r['attempts']}",
        f"  workers        declared dead {r['wrongly_dead']} (during start-up "
        f"{st['dead_seen']}); reclaims {r['reclaims']}",
        f"  dispatcher     CPU {d['cpu_seconds']} s ({d['cpu_cores']} cores), peak RSS "
        f"{d['peak_rss_mib']} MiB, peak threads {d['peak_threads']}",
        _machine_line(r["window"]),
    ]


def _connection_lines(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [f"\nconnections: keep-alive clients POSTing single no-ops, {s['seconds']:g} s per "
             f"level, a fresh dispatcher each, {s['client_processes']} client processes",
             f"  {'conns':>6}{'tasks/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
             f"{'per conn min/max':>18}{'disp. cores':>12}{'client cores':>13}{'others':>8}"]
    for lv in r["levels"]:
        lat, per = lv["latency_ms"], lv["per_connection_completed"]
        lines.append(
            f"  {lv['connections']:>6}{_n(lv['tasks_per_second']):>10}{_n(lat['p50']):>9}"
            f"{_n(lat['p99']):>9}{_n(lat['max']):>9}{lv['errors']:>8}"
            f"{str(per['min']) + '/' + str(per['max']):>18}{lv['dispatcher']['cpu_cores']:>12}"
            f"{lv['clients']['cpu_cores']:>13}{lv['window']['cpu_cores']['others']:>8}")
    starved = {lv["connections"]: lv["connections_never_answered"] for lv in r["levels"]
               if lv["connections_never_answered"]}
    if starved:
        lines.append(f"  connections with no submission answered in the window: {starved}")
    low, high = r["rate_ratio_levels"]
    lines.append(f"  rate at {high} / rate at {low} connections: {_n(r['rate_ratio'], 3)}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The human-readable summary: each workload's figures, then the targets."""
    meta, results = report["meta"], report["results"]
    lines = [f"fleet benchmark of {meta['project_root']} ({meta['project_commit']}) on "
             f"{meta['cpu_count']} CPUs; env {meta['env'] or '(defaults)'}; load average "
             + "/".join(f"{v:.1f}" for v in meta["load_average_before"]) + " before"
             + (" [QUICK: tiny sizes]" if meta["quick"] else "")]
    sections = {"idle": _idle_lines, "drain": _drain_lines, "connections": _connection_lines}
    for name, lines_of in sections.items():
        if name not in results:
            continue
        if "error" in results[name]:
            lines.append(f"\n{name}: FAILED: {results[name]['error']}")
        else:
            lines += lines_of(results[name])
    lines += ["\ntargets", f"  {'target':<56}{'figure':>10}{'bound':>8}  status"]
    for row in report["targets"]:
        lines.append(f"  {row['description']:<56}{_n(row['figure'], 2):>10}{row['bound']:>8}"
                     f"  {row['status']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
