"""Markdown tables of a result file, for docs/performance.md.

    python -m benchmarks.markdown benchmarks/results/example.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.pg import PG_SYSTEMS
from benchmarks.targets import _ratio


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if abs(value) < 10:
        digits = max(digits, 2)
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _times(value: float | None) -> str:
    return "n/a" if value is None else _num(value, 2) + "x"


def _bases(systems: dict[str, Any]) -> list[str]:
    """Ours, and ours-pg when PostgreSQL systems are in the table."""
    return ["ours"] + (["ours-pg"] if set(systems) & set(PG_SYSTEMS) else [])


def queue_tables(results: dict[str, Any]) -> list[str]:
    """Drain and round trips: every system, with ours' (and ours-pg's) ratio to it."""
    lines: list[str] = []
    drain = (results.get("drain") or {}).get("systems") or {}
    if drain:
        bases = _bases(drain)
        rows = [[name, _num(s["median"], 0),
                 " / ".join(_num(r["tasks_per_second"], 0) for r in s["runs"]),
                 _num(s.get("steady_tasks_per_second"), 0), _num(s.get("first_result_seconds"), 2),
                 *(_times(_ratio((drain.get(b) or {}).get("median"), s["median"]))
                   for b in bases)] for name, s in drain.items()]
        lines += [f"**Drain** ({results['drain']['tasks']:,} no-op tasks, 2 worker processes)", ""]
        lines += _table(["system", "tasks/s (median)", "runs", "steady tasks/s", "first result s",
                         *(f"{b} ÷ system" for b in bases)], rows) + [""]
    trip = (results.get("roundtrip") or {}).get("systems") or {}
    if trip:
        bases = _bases(trip)
        rows = [[name, _num(s["median"], 2), _num(s.get("p90_ms"), 1), _num(s.get("p99_ms"), 1),
                 _num(s.get("mean_ms"), 1),
                 *(_times(_ratio((trip.get(b) or {}).get("median"), s["median"])) for b in bases)]
                for name, s in trip.items()]
        lines += [f"**Idle round trip** ({results['roundtrip']['samples']} samples per run)", ""]
        lines += _table(["system", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                         *(f"{b} p50 ÷ system" for b in bases)], rows) + [""]
    return lines + cross_table(results)


def cross_table(results: dict[str, Any]) -> list[str]:
    """ours-pg's round trip across two dispatchers, against its round trip on one."""
    cross = ((results.get("cross_roundtrip") or {}).get("systems") or {}).get("ours-pg")
    if not cross:
        return []
    same = (((results.get("roundtrip") or {}).get("systems") or {}).get("ours-pg") or {})
    row = [_num(cross["median"], 2), _num(cross.get("p90_ms"), 1), _num(cross.get("p99_ms"), 1),
           _num(cross.get("mean_ms"), 1), _times(_ratio(cross["median"], same.get("median")))]
    return ["**Round trip across two dispatchers** (ours-pg: submit through A, wait through B)",
            ""] + _table(["p50 ms", "p90 ms", "p99 ms", "mean ms", "÷ one dispatcher"],
                         [row]) + [""]


def kernel_table(results: dict[str, Any]) -> list[str]:
    """Every kernel: median seconds, ours' ratio, peak RSS, prime count."""
    kern = results.get("kernels") or {}
    rows = []
    for section in ("sieve", "window", "trial_division"):
        entries = kern.get(section) or {}
        ours = (entries.get("ours") or {}).get("median_seconds")
        for name, entry in entries.items():
            if isinstance(entry, dict) and "median_seconds" in entry:
                rows.append([section, name, _num(entry["median_seconds"], 3),
                             _num(_ratio(ours, entry["median_seconds"]), 2) + "x",
                             _num(entry.get("peak_rss_mib"), 0), f"{entry['count']:,}"])
    if not rows:
        return []
    return _table(["kernel", "implementation", "seconds", "ours ÷ it", "peak RSS MiB", "primes"],
                  rows) + [""]


def targets_table(report: dict[str, Any]) -> list[str]:
    """The performance targets."""
    rows = [[t["description"], _num(t["figure"], 2), t["bound"], f"**{t['status']}**"]
            for t in report["targets"]]
    return _table(["target", "measured", "goal", "status"], rows) + [""]


def render(report: dict[str, Any]) -> str:
    """All tables of one report."""
    results = report["results"]
    return "\n".join(targets_table(report) + queue_tables(results) + kernel_table(results))


def main(argv: list[str] | None = None) -> int:
    """Print the tables of the given result file."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m benchmarks.markdown RESULT.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
