"""The performance targets as ratios of figures from the same run, and the text report.

Reporting, not a test: a missed target prints MISS, a figure that was not measured n/a.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.pg import PG_SYSTEMS

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One goal: a ratio (or absolute figure) computed from the results, and its bound."""

    name: str
    description: str
    figure: Callable[[Results], float | None]
    bound: float
    at_least: bool
    """True: the figure must be >= bound; False: <= bound."""


def get_path(results: Results, *path: str) -> Any:
    """The value at ``results[path[0]][path[1]]...``, or None where the path ends early."""
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(top: Any, bottom: Any) -> float | None:
    if top is None or bottom in (None, 0):
        return None
    return float(top) / float(bottom)


def _system(workload: str, system: str) -> Callable[[Results], float | None]:
    return lambda r: get_path(r, workload, "systems", system, "median")


def _over(workload: str, top: str, bottom: str) -> Callable[[Results], float | None]:
    return lambda r: _ratio(_system(workload, top)(r), _system(workload, bottom)(r))


def _ours_over(workload: str, peer: str) -> Callable[[Results], float | None]:
    return _over(workload, "ours", peer)


def _cross_over_same(r: Results) -> float | None:
    return _ratio(_system("cross_roundtrip", "ours-pg")(r), _system("roundtrip", "ours-pg")(r))


TARGETS = (
    Target("drain_vs_huey_sqlite", "drain tasks/s, ours / Huey-SQLite",
           _ours_over("drain", "huey-sqlite"), 2.5, True),
    Target("drain_vs_huey_redis", "drain tasks/s, ours / Huey-Redis",
           _ours_over("drain", "huey-redis"), 1.5, True),
    Target("roundtrip_vs_huey_sqlite", "idle round trip p50, ours / Huey-SQLite",
           _ours_over("roundtrip", "huey-sqlite"), 0.1, False),
    Target("roundtrip_vs_celery", "idle round trip p50, ours / Celery",
           _ours_over("roundtrip", "celery"), 1.0, False),
    Target("submission_rate", "batch submission, tasks/s (batches of 1000)",
           lambda r: get_path(r, "submission", "batch", "median"), 20_000, True),
    Target("claim_1m_vs_1k", "claim p50 with 1M pending / with 1k pending",
           lambda r: _ratio(get_path(r, "big_queue", "big", "claim_p50_ms"),
                            get_path(r, "big_queue", "small", "claim_p50_ms")), 1.5, False),
    Target("dispatcher_rss_1m", "dispatcher RSS with 1M pending, MiB",
           lambda r: get_path(r, "big_queue", "big", "rss_mib"), 200, False),
    Target("sieve_vs_primesieve", "sieve 10^9 time, ours / primesieve --threads=1",
           lambda r: _ratio(get_path(r, "kernels", "sieve", "ours", "median_seconds"),
                            get_path(r, "kernels", "sieve", "primesieve_1thread", "median_seconds")),
           8.0, False),
    Target("trial_vs_pure_python", "trial division 10^7 speed-up, pure-Python time / ours",
           lambda r: _ratio(get_path(r, "kernels", "trial_division", "pure_python", "median_seconds"),
                            get_path(r, "kernels", "trial_division", "ours", "median_seconds")),
           10.0, True),
    Target("scaling_2_workers", "CPU-bound sieve tasks, 2 workers speed-up over 1",
           lambda r: get_path(r, "scaling", "speedup"), 1.8, True),
    Target("pg_drain_vs_procrastinate", "drain tasks/s, ours-pg / Procrastinate",
           _over("drain", "ours-pg", "procrastinate"), 3.0, True),
    Target("pg_drain_vs_pgqueuer", "drain tasks/s, ours-pg / PgQueuer",
           _over("drain", "ours-pg", "pgqueuer"), 1.0, True),
    Target("pg_drain_vs_sqlite", "drain tasks/s, ours-pg / ours (SQLite)",
           _over("drain", "ours-pg", "ours"), 0.5, True),
    Target("pg_roundtrip_vs_procrastinate", "idle round trip p50, ours-pg / Procrastinate",
           _over("roundtrip", "ours-pg", "procrastinate"), 1.0, False),
    Target("pg_roundtrip_vs_pgqueuer", "idle round trip p50, ours-pg / PgQueuer",
           _over("roundtrip", "ours-pg", "pgqueuer"), 0.1, False),
    Target("pg_claim_1m_vs_1k", "claim p50 on PostgreSQL with 1M pending / with 1k pending",
           lambda r: _ratio(get_path(r, "big_queue_pg", "big", "claim_p50_ms"),
                            get_path(r, "big_queue_pg", "small", "claim_p50_ms")), 1.5, False),
    Target("pg_cross_roundtrip", "round trip p50, ours-pg across 2 dispatchers / on one",
           _cross_over_same, 2.0, False),
)


def evaluate(results: Results, targets: Sequence[Target] = TARGETS,
             met_word: str = "PASS") -> list[dict[str, Any]]:
    """Each target with its figure and ``met_word``, MISS or n/a (not measured)."""
    rows = []
    for target in targets:
        figure = target.figure(results)
        if figure is None:
            status = "n/a"
        else:
            met = figure >= target.bound if target.at_least else figure <= target.bound
            status = met_word if met else "MISS"
        rows.append({"name": target.name, "description": target.description,
                     "figure": figure, "bound": (">= " if target.at_least else "<= ")
                     + f"{target.bound:g}", "status": status})
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and abs(value) < 10:
        return f"{value:.{max(digits, 2)}f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _load(value: Any) -> str:
    return "/".join(f"{v:.1f}" for v in value) if value else "-"


def _times(value: float | None) -> str:
    return "n/a" if value is None else _fmt(value, 2) + "x"


LABELS = {"steady_tasks_per_second": "steady", "first_result_seconds": "1st result s"}
"""Short column headers for long result keys."""


def _queue_table(results: Results, workload: str, columns: list[str], better: str) -> list[str]:
    data = results.get(workload) or {}
    systems = data.get("systems") or {}
    if not systems:
        return [f"  ({data.get('error', 'not run')})"] + _problems(data)
    named = set(systems) | set(data.get("errors") or {}) | set(data.get("skipped") or {})
    bases = ["ours"] + (["ours-pg"] if named & set(PG_SYSTEMS) else [])
    header = (f"  {'system':<14}" + "".join(f"{LABELS.get(c, c):>14}" for c in columns)
              + "".join(f"{base + ' vs it':>16}" for base in bases))
    lines = [header]
    for name, summary in systems.items():
        row = f"  {name:<14}" + "".join(f"{_fmt(summary.get(c)):>14}" for c in columns)
        for base in bases:
            ours = (systems.get(base) or {}).get("median")
            ratio = (_ratio(ours, summary["median"]) if better == "higher"
                     else _ratio(summary["median"], ours))
            row += f"{_times(ratio):>16}"
        lines.append(row)
    return lines + _problems(data)


def _cross_table(results: Results) -> list[str]:
    data = results.get("cross_roundtrip") or {}
    summary = (data.get("systems") or {}).get("ours-pg")
    if not summary:
        return [f"  ({data.get('error', 'no figures')})"] + _problems(data)
    columns = ["median", "p90_ms", "p99_ms", "mean_ms"]
    same = _system("roundtrip", "ours-pg")(results)
    return [f"  {'system':<14}" + "".join(f"{c:>14}" for c in columns) + f"{'/ one disp.':>14}",
            f"  {'ours-pg':<14}" + "".join(f"{_fmt(summary.get(c)):>14}" for c in columns)
            + f"{_times(_ratio(summary['median'], same)):>14}"] + _problems(data)


def _problems(data: Results) -> list[str]:
    lines = [f"  {name:<14} failed: {error}" for name, error in (data.get("errors") or {}).items()]
    skipped = data.get("skipped")
    if isinstance(skipped, str):
        return lines + [f"  skipped: {skipped}"]
    return lines + [f"  {name:<14} skipped: {why}" for name, why in (skipped or {}).items()]


def format_report(report: dict[str, Any]) -> str:
    """The human-readable summary: each workload's figures, then the targets."""
    results = report["results"]
    meta = report["meta"]
    lines = [f"benchmark of {meta['project_root']} ({meta['project_commit']}) on "
             f"{meta['cpu_count']} CPUs, {meta['repeats']} repeat(s), medians"
             + (" [QUICK: tiny sizes]" if meta["quick"] else ""),
             f"disk fsync p50: {_fmt(meta.get('fsync_ms_before'), 2)} ms before, "
             f"{_fmt(meta.get('fsync_ms_after'), 2)} ms after (SQLite stores commit with fsync); "
             f"load average {_load(meta.get('load_average_before'))} before, "
             f"{_load(meta.get('load_average_after'))} after"]
    if "drain" in results:
        lines += [f"\ndrain: {results['drain'].get('tasks')} no-op tasks, 2 worker processes, "
                  "tasks/s (ours vs it = ours / it; steady = from the first result on)"]
        lines += _queue_table(results, "drain",
                              ["median", "steady_tasks_per_second", "first_result_seconds"],
                              "higher")
    if "roundtrip" in results:
        lines += ["\nidle round trip, ms (ours vs it = it / ours: how many times faster ours is)"]
        lines += _queue_table(results, "roundtrip", ["median", "p90_ms", "p99_ms", "mean_ms"],
                              "lower")
    if "cross_roundtrip" in results:
        lines += ["\ncross-dispatcher round trip, ms (ours-pg, 2 dispatchers on one database: "
                  "submit through A, wait through B)"]
        lines += _cross_table(results)
    lines += _other_sections(results)
    lines += ["\ntargets", f"  {'target':<56}{'figure':>12}{'bound':>10}  status"]
    for row in report["targets"]:
        lines.append(f"  {row['description']:<56}{_fmt(row['figure'], 2):>12}"
                     f"{row['bound']:>10}  {row['status']}")
    return "\n".join(lines)


def _other_sections(results: Results) -> list[str]:
    lines: list[str] = []
    sub = results.get("submission")
    if sub:
        lines += ["\nsubmission (ours), tasks/s", *(
            f"  {k:<28}{_fmt(v.get('median')):>12}" for k, v in sub.items()
            if isinstance(v, dict) and "median" in v)]
        if "error" in sub:
            lines.append(f"  error: {sub['error']}")
    big = results.get("big_queue")
    if big:
        lines += ["\nbig queue (ours): claim latency (POST /get-task) and dispatcher memory"]
        for key in ("small", "big"):
            part = big.get(key)
            if part:
                lines.append(f"  {part['pending']:>9,} pending: claim p50 "
                             f"{_fmt(part['claim_p50_ms'])} ms, p90 "
                             f"{_fmt(part['claim_p90_ms'])} ms, RSS {_fmt(part['rss_mib'])}"
                             f" MiB (peak {_fmt(part['rss_peak_mib'])}), fill "
                             f"{_fmt(part['fill_tasks_per_second'])} tasks/s")
        if "error" in big:
            lines.append(f"  error: {big['error']}")
    kern = results.get("kernels")
    if kern:
        lines += ["\nprime kernels, seconds (median), ours / it, peak RSS"]
        for section, entries in kern.items():
            if not isinstance(entries, dict):
                continue
            ours = (entries.get("ours") or {}).get("median_seconds")
            for name, entry in entries.items():
                if isinstance(entry, dict) and "median_seconds" in entry:
                    rss = entry.get("peak_rss_mib")
                    seconds = _fmt(entry["median_seconds"], 3)
                    ratio = _fmt(_ratio(ours, entry["median_seconds"]), 2)
                    lines.append(f"  {section:<16}{name:<24}{seconds:>10} s{ratio:>8}x"
                                 + (f"   peak RSS {_fmt(rss)} MiB" if rss else "")
                                 + (f"   ({entry['note']})" if entry.get("note") else ""))
                elif isinstance(entry, dict) and "skipped" in entry:
                    lines.append(f"  {section:<16}{name:<26} skipped: {entry['skipped']}")
        if "error" in kern:
            lines.append(f"  error: {kern['error']}")
    scal = results.get("scaling")
    if scal:
        if "error" in scal:
            lines.append(f"\nscaling: error: {scal['error']}")
        else:
            lines += [f"\nscaling: {scal['tasks']} sieve tasks of {scal['limit']:,}: "
                      f"1 worker {_fmt(scal['one_worker_seconds'])} s, 2 workers "
                      f"{_fmt(scal['two_workers_seconds'])} s, "
                      f"speed-up {_fmt(scal['speedup'], 2)}x"]
    return lines
