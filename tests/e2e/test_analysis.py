"""The analysis runners and plotters in --quick mode, run as a user would; outputs in tmp_path."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.config import REPO_ROOT

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_WIDTH, MIN_HEIGHT = 1000, 600


def run_module(module: str, *args: str, timeout: float = 300) -> str:
    """Run ``python -m module args`` from the repository root; return its stdout."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_plots(paths: list[Path]) -> None:
    """Every file is a PNG of at least MIN_WIDTH x MIN_HEIGHT."""
    assert paths
    for path in paths:
        width, height = png_size(path)
        assert width >= MIN_WIDTH and height >= MIN_HEIGHT, f"{path}: {width}x{height}"


def assert_run_timings(run: dict[str, Any], num_tasks: int) -> None:
    """The per-run figures every runner writes."""
    assert run["wall_seconds"] > 0 and run["tasks_per_second"] > 0
    assert run["not_completed"] == 0 and run["distinct_results"] == 1
    for key in ("task_seconds", "queue_wait_seconds", "compute_seconds", "attempts"):
        assert len(run[key]) == num_tasks, key
    assert min(run["queue_wait_seconds"]) >= 0 and min(run["task_seconds"]) > 0


def test_throughput_quick_run_and_plots(tmp_path: Path) -> None:
    output = tmp_path / "throughput.json"
    stdout = run_module("analysis.task_throughput_analysis", "--quick", "--output", str(output))
    assert "CPU cores" in stdout and "speedup" in stdout

    document = json.loads(output.read_text())
    assert document["kind"] == "throughput"
    assert document["config"]["worker_counts"] == [1, 2]
    assert document["machine"]["cpu_count_logical"] >= 1
    assert [r["workers"] for r in document["runs"]] == [1, 2]
    for run in document["runs"]:
        assert_run_timings(run, document["config"]["num_tasks"])
    first, second = document["summary"]
    assert first["speedup"] == pytest.approx(1.0) and first["efficiency"] == pytest.approx(1.0)
    assert second["ideal_speedup"] == 2 and second["speedup"] > 0
    assert second["wall_seconds"]["n"] == 1

    plots = tmp_path / "plots"
    run_module("analysis.throughput_analysis_plot", "--input", str(output),
               "--output-dir", str(plots))
    assert_plots(sorted(plots.glob("*.png")))
    assert (plots / "throughput_speedup.png").exists()


def test_throughput_run_through_worker_supervisors(tmp_path: Path) -> None:
    output = tmp_path / "throughput.json"
    run_module("analysis.task_throughput_analysis", "--worker-counts", "2", "--processes", "2",
               "--num-tasks", "2", "--task-size", "100000", "--repeats", "1",
               "--output", str(output))
    document = json.loads(output.read_text())
    assert document["config"]["processes_per_supervisor"] == 2
    (run,) = document["runs"]
    assert run["workers"] == 2
    assert_run_timings(run, 2)
    refused = subprocess.run([sys.executable, "-m", "analysis.task_throughput_analysis",
                              "--worker-counts", "3", "--processes", "2"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "multiple of --processes 2" in refused.stderr


def test_recovery_quick_run_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_module("analysis.recovery_time_analysis", "--quick", "--output-dir", str(results))

    baseline = json.loads((results / "recovery_0.json").read_text())
    failed = json.loads((results / "recovery_1.json").read_text())
    assert baseline["kind"] == failed["kind"] == "recovery"
    assert baseline["workload"] == failed["workload"]
    assert baseline["runs"][0]["kills"] == [] and baseline["summary"]["overhead_seconds"] == 0

    run = failed["runs"][0]
    assert_run_timings(run, failed["workload"]["num_tasks"])
    (kill,) = run["kills"]
    assert kill["detected_seconds"] > 0
    assert run["killed_tasks"], "the victim should have held a task (busy workers are killed first)"
    for event in run["killed_tasks"]:
        assert event["worker_id"] == kill["worker_id"]
        assert event["reassigned_seconds"] >= event["detected_seconds"] > 0
        assert event["new_worker_id"] != kill["worker_id"]
        assert event["checkpoint_age_seconds"] >= 0
    summary = failed["summary"]
    assert summary["baseline_wall_seconds"] == baseline["summary"]["wall_seconds"]["mean"]
    assert summary["overhead_seconds"] == pytest.approx(
        summary["wall_seconds"]["mean"] - summary["baseline_wall_seconds"])

    plots = tmp_path / "plots"
    run_module("analysis.recovery_analysis_plot", "--results-dir", str(results),
               "--output-dir", str(plots))
    assert_plots(sorted(plots.glob("*.png")))
    assert (plots / "recovery_reassignment_times.png").exists()


def test_split_speedup_quick_run_checks_its_answers(tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    printed = run_module("analysis.split_speedup", "--limit", "1e8", "--parts", "4",
                         "--output", str(out))
    doc = json.loads(out.read_text())
    assert doc["kind"] == "split_speedup" and doc["known_prime_count"] == 5_761_455
    assert doc["answers_agree"] is True and doc["correct"] is True
    assert [(r["mode"], r["parts"]) for r in doc["runs"]] == [("unsplit", 1), ("split", 4)]
    assert doc["speedup"] > 0 and "| unsplit |" in printed.replace("  ", " ")
