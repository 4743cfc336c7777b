"""The fleet benchmark in --quick mode: every workload runs and the JSON has its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import REPO_ROOT

pytestmark = pytest.mark.slow

TARGETS = ["idle_heartbeat_p99", "idle_wrongly_dead", "drain_ratio",
           "drain_dead_worker_reclaims", "connections_ratio"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One quick run of the three workloads; its JSON result and printed table."""
    out = tmp_path_factory.mktemp("fleet")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--quick", "--output",
         str(out / "fleet.json"), "--workdir", str(out / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "fleet.json").read_text())
    result["printed"] = done.stdout
    return result


def test_meta_names_the_run(report: dict) -> None:
    meta = report["meta"]
    assert meta["quick"] is True
    assert Path(meta["project_root"]) == REPO_ROOT
    assert meta["sizes"]["idle_workers"] == 12 and meta["sizes"]["connections"] == [2, 4]
    assert not [name for name, part in report["results"].items() if "error" in part]


def test_idle_fleet_has_its_figures(report: dict) -> None:
    idle = report["results"]["idle"]
    assert idle["registration"]["complete"] and idle["registration"]["registered"] == 12
    beats = idle["heartbeats"]
    assert beats["sent"] > 0 and beats["sent"] == sum(beats["outcomes"].values())
    assert beats["latency_ms"]["p50"] <= beats["latency_ms"]["p99"] <= beats["latency_ms"]["max"]
    assert idle["claims"]["round_trips"] > 0
    assert idle["stats"]["samples"] > 0 and idle["final"]["total"] == 12
    assert "dead_worker" in idle["final"]["reclaims"]
    assert idle["dispatcher"]["peak_rss_mib"] > 0 and idle["dispatcher"]["peak_threads"] > 1
    assert idle["simulators"]["processes"] == 2 and idle["simulators"]["cpu_seconds"] >= 0


def test_drain_ran_every_task(report: dict) -> None:
    drain = report["results"]["drain"]
    assert drain["settings"]["ideal_seconds"] == 2.0  # ceil(6 / 3) * 1 s
    assert drain["startup"]["all_alive"] and drain["startup"]["alive"] == 3
    assert drain["statuses"] == {"completed": 6}
    assert drain["seconds"] > 0 and drain["ratio_to_ideal"] > 0
    assert "dead_worker" in drain["reclaims"]


def test_connections_has_one_level_each(report: dict) -> None:
    conns = report["results"]["connections"]
    assert [level["connections"] for level in conns["levels"]] == [2, 4]
    for level in conns["levels"]:
        assert level["completed"] > 0 and level["tasks_per_second"] > 0
        assert level["completed"] + level["errors"] == sum(level["outcomes"].values())
        assert level["clients"]["processes"] == 2
    assert conns["rate_ratio"] > 0 and conns["rate_ratio_levels"] == [2, 4]


def test_targets_are_reported(report: dict) -> None:
    rows = report["targets"]
    assert [row["name"] for row in rows] == TARGETS
    assert {row["status"] for row in rows} <= {"met", "MISS"}  # all measured: none n/a
    assert "targets" in report["printed"] and "connections:" in report["printed"]
