"""The benchmark report: --peers selection, targets and tables when figures are missing."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import markdown, targets
from benchmarks.compare import peer_names
from benchmarks.pg import PG_SYSTEMS

KNOWN = ["ours-pg", "huey-sqlite", "celery", "procrastinate", "pgqueuer", "pg-bare"]


def _summary(median: float) -> dict[str, Any]:
    return {"median": median, "p90_ms": median * 2, "p99_ms": median * 3, "mean_ms": median,
            "runs": [{"tasks_per_second": median, "p50_ms": median}]}


def _report(results: dict[str, Any]) -> dict[str, Any]:
    meta = {"project_root": "/repo", "project_commit": "abc", "cpu_count": 2, "repeats": 1,
            "quick": True}
    return {"meta": meta, "results": results, "targets": targets.evaluate(results)}


def test_pg_selects_ours_pg_and_the_postgresql_peers() -> None:
    assert peer_names("pg", KNOWN) == ["ours-pg", "procrastinate", "pgqueuer", "pg-bare"]
    assert set(PG_SYSTEMS) <= set(peer_names("all", KNOWN))
    assert peer_names("pg,celery", KNOWN) == ["ours-pg", "celery", "procrastinate", "pgqueuer",
                                              "pg-bare"]
    assert peer_names("none", KNOWN) == []


def test_unknown_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="'pgqueue'"):
        peer_names("pgqueue", KNOWN)


def test_pg_targets_are_ratios_of_the_same_run() -> None:
    results = {
        "drain": {"tasks": 10, "systems": {"ours": _summary(2000), "ours-pg": _summary(3000),
                                           "procrastinate": _summary(500),
                                           "pgqueuer": _summary(6000)}},
        "roundtrip": {"samples": 1, "systems": {"ours-pg": _summary(2),
                                                "procrastinate": _summary(4),
                                                "pgqueuer": _summary(80)}},
        "cross_roundtrip": {"samples": 1, "systems": {"ours-pg": _summary(5)}},
    }
    rows = {row["name"]: row for row in targets.evaluate(results)}
    assert rows["pg_drain_vs_procrastinate"]["figure"] == 6.0
    assert rows["pg_drain_vs_procrastinate"]["status"] == "PASS"
    assert rows["pg_drain_vs_pgqueuer"]["status"] == "MISS"
    assert rows["pg_drain_vs_sqlite"]["figure"] == 1.5
    assert rows["pg_roundtrip_vs_procrastinate"]["figure"] == 0.5
    assert rows["pg_roundtrip_vs_pgqueuer"]["figure"] == 0.025
    assert rows["pg_cross_roundtrip"]["figure"] == 2.5
    assert rows["pg_cross_roundtrip"]["status"] == "MISS"


def test_missing_pg_figures_print_as_n_a() -> None:
    failed = "BenchError: the dispatcher exited with 1 at start"
    results = {
        "drain": {"tasks": 10, "systems": {"ours": _summary(2000), "pgqueuer": _summary(6000)},
                  "errors": {"ours-pg": failed}, "skipped": {"procrastinate": "no server"}},
        "roundtrip": {"samples": 1, "systems": {"ours": _summary(3)},
                      "errors": {"ours-pg": failed}},
        "cross_roundtrip": {"samples": 1, "systems": {}, "errors": {"ours-pg": failed}},
    }
    report = _report(results)
    text = targets.format_report(report)
    pg_rows = [row for row in report["targets"] if row["name"].startswith("pg_")]
    assert len(pg_rows) == 7 and {row["status"] for row in pg_rows} == {"n/a"}
    assert "ours-pg vs it" in text and f"ours-pg        failed: {failed}" in text
    assert "procrastinate  skipped: no server" in text
    assert "drain tasks/s, ours-pg / PgQueuer" in text
    assert "n/a" in markdown.render(report)
