"""The benchmark harness in --quick mode, for this project only (peers need requirements-bench)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.targets import TARGETS
from shared.config import REPO_ROOT

pytestmark = pytest.mark.slow

SECTIONS = ("drain", "roundtrip", "submission", "big_queue", "kernels", "scaling")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One quick run of every workload; its JSON result."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--quick", "--peers", "none",
         "--output", str(out / "result.json"), "--charts-dir", str(out / "charts")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\ntargets\n" in done.stdout
    result = json.loads((out / "result.json").read_text())
    result["chart_files"] = sorted(p.name for p in (out / "charts").glob("bench_*.png"))
    return result


def test_meta_names_the_run(report: dict) -> None:
    meta = report["meta"]
    assert meta["quick"] is True and meta["repeats"] == 1
    assert Path(meta["project_root"]) == REPO_ROOT
    assert meta["cpu_count"] >= 1


def test_every_workload_has_figures(report: dict) -> None:
    results = report["results"]
    assert set(SECTIONS) <= set(results)
    assert not [name for name in SECTIONS if "error" in results[name]]
    assert results["drain"]["systems"]["ours"]["median"] > 0
    roundtrip = results["roundtrip"]["systems"]["ours"]
    assert 0 < roundtrip["median"] <= roundtrip["p90_ms"] <= roundtrip["p99_ms"]
    assert results["submission"]["batch"]["median"] > 0
    big = results["big_queue"]
    assert big["big"]["pending"] > big["small"]["pending"]
    assert big["big"]["claim_p50_ms"] > 0 and big["big"]["rss_mib"] > 0
    assert results["scaling"]["speedup"] > 0


def test_kernels_agree_on_the_prime_counts(report: dict) -> None:
    kernels = report["results"]["kernels"]
    for section in ("sieve", "window", "trial_division"):
        assert "count_mismatch" not in kernels[section]
        assert kernels[section]["ours"]["median_seconds"] > 0
    assert kernels["sieve"]["ours"]["count"] == 664579  # primes up to 10**7
    assert kernels["trial_division"]["pure_python"]["count"] == 9592  # up to 10**5


def test_targets_are_reported(report: dict) -> None:
    rows = report["targets"]
    assert [row["name"] for row in rows] == [target.name for target in TARGETS]
    assert {row["status"] for row in rows} <= {"PASS", "MISS", "n/a"}
    # Without peers, only the ratios against peers (and primesieve if absent) are missing.
    expected = ["drain_vs_huey_sqlite", "drain_vs_huey_redis", "roundtrip_vs_huey_sqlite",
                "roundtrip_vs_celery"]
    if shutil.which("primesieve") is None:
        expected.append("sieve_vs_primesieve")
    # The PostgreSQL peers are not in --peers none; the big-queue claim on PostgreSQL is ours and
    # runs whenever a PostgreSQL server answers.
    pg_ran = "claim_p50_ms" in (report["results"].get("big_queue_pg", {}).get("big") or {})
    expected += [row["name"] for row in rows if row["name"].startswith("pg_")
                 and not (pg_ran and row["name"] == "pg_claim_1m_vs_1k")]
    assert [row["name"] for row in rows if row["status"] == "n/a"] == expected


def test_cross_roundtrip_is_skipped_without_ours_pg(report: dict) -> None:
    assert report["results"]["cross_roundtrip"] == {"skipped": "ours-pg is not in --peers"}


def test_charts_are_drawn(report: dict) -> None:
    assert {"bench_drain.png", "bench_roundtrip.png", "bench_kernels.png",
            "bench_ours.png"} <= set(report["chart_files"])
