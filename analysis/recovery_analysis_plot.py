#!/usr/bin/env python3
"""Plot the recovery analysis: what 0, 2, 4, ... killed workers cost against the baseline.

    python analysis/recovery_analysis_plot.py    # analysis/results/ -> analysis/recovery_plots/
    python analysis/recovery_analysis_plot.py --results-dir /tmp/r --output-dir /tmp/plots

Only result files made with the baseline's workload (recovery_0.json) are plotted; others are
listed and skipped. Error bars: one sample standard deviation over the repeats; dots: single runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import REPO_ROOT, require_venv

require_venv()

import numpy as np  # noqa: E402

from analysis.common import RESULTS_DIR, read_json  # noqa: E402
from analysis.plotting import Axes, new_figure, save  # noqa: E402

DEFAULT_OUTPUT_DIR = REPO_ROOT / "analysis" / "recovery_plots"
Documents = list[dict[str, Any]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where recovery_<K>.json are (default analysis/results)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="where the PNGs go (default analysis/recovery_plots)")
    return parser.parse_args(argv)


def load_documents(results_dir: Path) -> Documents:
    """The baseline and every result file with its workload, sorted by K."""
    baseline_path = results_dir / "recovery_0.json"
    if not baseline_path.exists():
        raise FileNotFoundError(f"{baseline_path} not found; run "
                                "analysis/recovery_time_analysis.py --dead-workers 0 first")
    workload = read_json(baseline_path)["workload"]
    documents = []
    for path in sorted(results_dir.glob("recovery_*.json")):
        document = read_json(path)
        if document.get("workload") == workload:
            documents.append(document)
        else:
            print(f"skipped {path}: made with another workload than the baseline")
    return sorted(documents, key=lambda d: d["dead_workers"])


def subtitle(documents: Documents) -> str:
    """The workload and machine in one line."""
    w, m = documents[0]["workload"], documents[0]["machine"]
    kill_at = ", ".join(f"{p:.0%}" for p in documents[-1]["config"]["kill_at"])
    others = [r["cpu"]["others_percent"] for d in documents for r in d["runs"]]
    return (f"{w['workers']} workers; {w['num_tasks']} x primes {w['algorithm']} up to "
            f"{w['task_size']:,}; killed at {kill_at} progress; checkpoint every "
            f"{w['checkpoint_interval']:g} s; dead after {w['heartbeat_timeout']:g} s; "
            f"{m['cpu_count_logical']} CPU cores; other processes used "
            f"{sum(others) / len(others):.0f}% of the CPU during the runs (mean)")


def _k_axis(ax: Axes, documents: Documents) -> list[int]:
    ks = [d["dead_workers"] for d in documents]
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("workers killed (SIGKILL)")
    ax.grid(True, axis="y", alpha=0.3)
    return ks


def _dots(ax: Axes, documents: Documents, values: list[list[float]]) -> None:
    for k, ys in zip((d["dead_workers"] for d in documents), values, strict=True):
        ax.scatter([k] * len(ys), ys, s=16, color="black", alpha=0.5, zorder=3)
    ax.scatter([], [], s=16, color="black", alpha=0.5, label="single runs")


def _best(ax: Axes, ks: list[int], values: list[float | None]) -> None:
    """Fastest run with failures against the fastest baseline run (least disturbed by load)."""
    pairs = [(k, v) for k, v in zip(ks, values, strict=True) if v is not None]
    if pairs:
        ax.scatter(*zip(*pairs, strict=True), marker="D", s=60, color="gold", edgecolor="black",
                   zorder=4, label="fastest run vs fastest baseline")


def _bars(ax: Axes, ks: list[int], means: list[float], stds: list[float], color: str,
          label: str, unit: str) -> None:
    width = 0.6 * (min(np.diff(ks)) if len(ks) > 1 else 1)
    ax.bar(ks, means, yerr=stds, width=width, capsize=6, color=color, alpha=0.8, label=label)
    for k, mean in zip(ks, means, strict=True):
        if mean:  # the value, at the foot of the bar, clear of the error bar
            ax.annotate(f"{mean:.1f}{unit}", (k, 0), xytext=(0, 5 if mean > 0 else -5),
                        textcoords="offset points", ha="center", va="bottom" if mean > 0 else "top",
                        fontsize=11, color="white", fontweight="bold")


def plot_execution_time(ax: Axes, documents: Documents) -> None:
    """Execution time per K (mean ± std) against the baseline."""
    ks = _k_axis(ax, documents)
    walls = [d["summary"]["wall_seconds"] for d in documents]
    _bars(ax, ks, [w["mean"] for w in walls], [w["std"] for w in walls], "tab:blue",
          "with failures (mean ± std)", " s")
    _dots(ax, documents, [[r["wall_seconds"] for r in d["runs"]] for d in documents])
    ax.axhline(walls[0]["mean"], color="tab:green", linestyle="--", linewidth=2,
               label=f"baseline, no failures ({walls[0]['mean']:.1f} s)")
    ax.set_ylabel("execution time (s)")
    ax.set_title("Execution time with failures vs baseline")
    ax.margins(y=0.15)
    ax.legend(loc="upper left")


def _plot_overhead(ax: Axes, documents: Documents, per_run: list[list[float]],
                   best: list[Any], color: str, unit: str, ylabel: str, title: str) -> None:
    """Overhead bars (mean ± std of the runs), every run as a dot, the fastest-run figure."""
    ks = _k_axis(ax, documents)
    _bars(ax, ks, [float(np.mean(v)) for v in per_run], [_std(v) for v in per_run],
          color, "overhead (mean ± std)", unit)
    _dots(ax, documents, per_run)
    _best(ax, ks, best)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.legend(loc="upper left")


def plot_overhead_seconds(ax: Axes, documents: Documents) -> None:
    """Seconds added by the failures (mean ± std of the runs against the baseline mean)."""
    _plot_overhead(ax, documents,
                   [d["summary"]["overhead_seconds_per_run"] for d in documents],
                   [d["summary"].get("overhead_seconds_best") for d in documents],
                   "tab:red", " s", "recovery overhead (s)", "Recovery overhead in seconds")


def plot_overhead_percent(ax: Axes, documents: Documents) -> None:
    """Overhead as a percentage of the baseline's execution time."""
    base = documents[0]["summary"]["wall_seconds"]["mean"]
    _plot_overhead(ax, documents,
                   [[100 * v / base for v in d["summary"]["overhead_seconds_per_run"]]
                    for d in documents],
                   [d["summary"].get("overhead_percent_best") for d in documents],
                   "tab:orange", "%", "recovery overhead (% of baseline time)",
                   "Recovery overhead in percent")


def plot_failure_rate(ax: Axes, documents: Documents) -> None:
    """Throughput and interrupted tasks against the share of workers killed."""
    workers = documents[0]["workload"]["workers"]
    rates = [100 * d["dead_workers"] / workers for d in documents]
    tps = [d["summary"]["tasks_per_second"] for d in documents]
    ax.errorbar(rates, [t["mean"] for t in tps], yerr=[t["std"] for t in tps], marker="o",
                capsize=5, linewidth=2, color="tab:purple", label="throughput (mean ± std)")
    ax.set_xlabel(f"failure rate (% of the {workers} workers killed)")
    ax.set_ylabel("throughput (tasks/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    twin = ax.twinx()
    hit = [d["summary"]["killed_tasks_per_run"]["mean"] or 0 for d in documents]
    twin.bar(rates, hit, width=4, color="tab:gray", alpha=0.35, label="tasks interrupted per run")
    twin.set_ylabel("tasks interrupted per run")
    twin.set_ylim(0, max(max(hit), 1) * 2.5)
    ax.set_title("Impact of the failure rate")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left")


def _event_values(document: dict[str, Any], field: str) -> list[float]:
    return [e[field] for r in document["runs"] for e in r["killed_tasks"] if e[field] is not None]


def plot_reassignment_boxes(ax: Axes, documents: Documents) -> None:
    """Per K: time from SIGKILL to another worker holding the task."""
    failing = [d for d in documents if d["dead_workers"] > 0]
    data = [_event_values(d, "reassigned_seconds") for d in failing]
    ks = _k_axis(ax, failing)
    ax.boxplot([v or [np.nan] for v in data], positions=ks, widths=0.8)
    for k, values in zip(ks, data, strict=True):
        ax.scatter(np.full(len(values), k) + _jitter(len(values)), values, s=14, alpha=0.5,
                   color="tab:blue", zorder=3)
    _timeout_band(ax, documents[0]["workload"], horizontal=True)
    ax.set_ylabel("kill → task held by another worker (s)")
    ax.set_title("Reassignment time per killed task")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best")


def plot_reassignment_histogram(ax: Axes, documents: Documents) -> None:
    """All K pooled: detection (worker declared dead) and reassignment times."""
    detected = [k["detected_seconds"] for d in documents for r in d["runs"] for k in r["kills"]
                if k["detected_seconds"] is not None]
    reassigned = [v for d in documents for v in _event_values(d, "reassigned_seconds")]
    bins = np.linspace(0, max(detected + reassigned + [1.0]) * 1.05, 40)
    ax.hist([detected, reassigned], bins=bins, color=["tab:gray", "tab:blue"],
            label=["kill → worker declared dead", "kill → task held by another worker"])
    _timeout_band(ax, documents[0]["workload"], horizontal=False)
    ax.set_xlabel("seconds after SIGKILL")
    ax.set_ylabel("count (killed workers / tasks)")
    ax.set_title("Distribution of detection and reassignment times")
    ax.legend(loc="upper left")


def plot_work_redone(ax: Axes, documents: Documents) -> None:
    """Per K: work done again, two estimates, against the checkpoint interval."""
    failing = [d for d in documents if d["dead_workers"] > 0]
    ks = _k_axis(ax, failing)
    everything = []
    for offset, field, color, label in (
            (-0.25, "checkpoint_age_seconds", "tab:orange", "kill − last checkpoint seen"),
            (0.25, "redone_seconds_from_elapsed", "tab:green",
             "attempts' time − result's elapsed")):
        values = [_event_values(d, field) for d in failing]
        for k, v in zip(ks, values, strict=True):
            ax.scatter(np.full(len(v), k + offset) + _jitter(len(v), 0.08), v, s=16, alpha=0.6,
                       color=color)
            everything += v
        ax.scatter([], [], color=color, label=label)
    interval = documents[0]["workload"]["checkpoint_interval"]
    ax.axhline(interval, color="black", linestyle="--",
               label=f"CHECKPOINT_INTERVAL ({interval:g} s): the bound")
    ax.set_ylim(min([0.0, *everything]) - 0.05, max([interval, *everything]) * 1.5)
    ax.margins(x=0.2)
    ax.set_ylabel("work redone per killed task (s)")
    ax.set_title("Work lost and redone (from checkpoints)")
    ax.legend(loc="upper left")


def _timeout_band(ax: Axes, workload: dict[str, Any], horizontal: bool) -> None:
    """Expected detection: the last beat came 0..HEARTBEAT_INTERVAL before the kill; the
    monitor notices HEARTBEAT_TIMEOUT after that beat, at its next sweep."""
    low = workload["heartbeat_timeout"] - workload["heartbeat_interval"]
    high = workload["heartbeat_timeout"] + workload["monitor_interval"]
    span = ax.axhspan if horizontal else ax.axvspan
    span(low, high, color="tab:green", alpha=0.15,
         label=f"expected detection ({low:g}–{high:g} s)")


def _jitter(n: int, spread: float = 0.12) -> np.ndarray:
    return np.random.default_rng(n).uniform(-spread, spread, n)


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


PLOTS = {
    "recovery_execution_time.png": plot_execution_time,
    "recovery_overhead_seconds.png": plot_overhead_seconds,
    "recovery_overhead_percent.png": plot_overhead_percent,
    "recovery_failure_rate.png": plot_failure_rate,
    "recovery_reassignment_times.png": plot_reassignment_histogram,
    "recovery_reassignment_per_k.png": plot_reassignment_boxes,
    "recovery_work_redone.png": plot_work_redone,
}


def write_plots(documents: Documents, output_dir: Path) -> list[Path]:
    """Each plot on its own, then an overview of all; return the files written."""
    if not any(d["dead_workers"] > 0 for d in documents):
        print("only the baseline so far: run --dead-workers 2 (or more) for the failure plots")
        return []
    written = []
    for name, draw in PLOTS.items():
        fig, ax = new_figure(subtitle(documents))
        draw(ax, documents)
        written.append(save(fig, output_dir / name))
    fig, axes = new_figure(subtitle(documents), columns=3, rows=3)
    for ax, draw in zip(axes, PLOTS.values(), strict=False):
        draw(ax, documents)
    for ax in axes[len(PLOTS):]:
        ax.set_visible(False)
    written.append(save(fig, output_dir / "recovery_overview.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    """Read the recovery JSON files and write the PNGs."""
    args = parse_args(argv)
    try:
        documents = load_documents(args.results_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in write_plots(documents, args.output_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
