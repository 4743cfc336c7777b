#!/usr/bin/env python3
"""Plot a throughput analysis: execution time, throughput and speedup against the number of workers.

    python analysis/throughput_analysis_plot.py                 # analysis/results/throughput.json
    python analysis/throughput_analysis_plot.py --input run.json --output-dir /tmp/plots

Writes throughput_execution_time.png, throughput_tasks_per_second.png, throughput_speedup.png and
throughput_overview.png (the three side by side). Error bars: one sample standard deviation over
the repeats; dots: the individual runs; dotted: the fastest run of each count (least disturbed by
other load on the machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import require_venv

require_venv()

from analysis.common import RESULTS_DIR, read_json  # noqa: E402
from analysis.plotting import Axes, new_figure, save  # noqa: E402

DEFAULT_INPUT = RESULTS_DIR / "throughput.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT,
                        help="throughput JSON (default analysis/results/throughput.json)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help="where the PNGs go (default analysis/results)")
    return parser.parse_args(argv)


def subtitle(document: dict[str, Any]) -> str:
    """The workload and machine in one line."""
    c, m = document["config"], document["machine"]
    others = [r["cpu"]["others_percent"] for r in document["runs"]]
    return (f"{c['num_tasks']} x primes {c['algorithm']} up to {c['task_size']:,}; "
            f"{c['repeats']} repeat(s); {m['cpu_count_logical']} CPU cores; other processes "
            f"used {sum(others) / len(others):.0f}% of the CPU during the runs (mean)")


def _series(document: dict[str, Any], metric: str) -> tuple[list[int], list[float], list[float]]:
    rows = document["summary"]
    return ([r["workers"] for r in rows], [r[metric]["mean"] for r in rows],
            [r[metric]["std"] for r in rows])


def _runs(document: dict[str, Any], metric: str) -> tuple[list[int], list[float]]:
    runs = document["runs"]
    return [r["workers"] for r in runs], [r[metric] for r in runs]


def _worker_axis(ax: Axes, counts: list[int], core_count: int) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("workers")
    ax.axvline(core_count, color="grey", linestyle=":", linewidth=1.5,
               label=f"CPU cores ({core_count})")
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes) -> None:
    """The legend with the measured series (an errorbar, which matplotlib lists last) first."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[-1:] + handles[:-1], labels[-1:] + labels[:-1])


def _plot_measured(ax: Axes, document: dict[str, Any], metric: str, fastest: str,
                   colors: tuple[str | None, str], ideal: list[float], ylabel: str,
                   title: str) -> None:
    """A metric against workers: mean ± std, the fastest run, every run, and the ideal line."""
    counts, means, stds = _series(document, metric)
    ax.errorbar(counts, means, yerr=stds, marker="o", capsize=5, linewidth=2,
                color=colors[0], label="measured (mean ± std)")
    ax.plot(counts, [r[metric][fastest] for r in document["summary"]], "s:",
            color=colors[1], label="fastest run")
    ax.scatter(*_runs(document, metric), s=14, color="black", alpha=0.4, zorder=3,
               label="single runs")
    ax.plot(counts, ideal, "--", color="tab:green", label="ideal (linear scaling)")
    _worker_axis(ax, counts, document["machine"]["cpu_count_logical"])
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    _legend(ax)


def plot_time(ax: Axes, document: dict[str, Any]) -> None:
    """Execution time (mean ± std, runs as dots) with the ideal T1 * n1 / n."""
    counts, means, _ = _series(document, "wall_seconds")
    _plot_measured(ax, document, "wall_seconds", "min", (None, "tab:cyan"),
                   [means[0] * counts[0] / n for n in counts], "execution time (s)",
                   "Execution time vs workers")


def plot_throughput(ax: Axes, document: dict[str, Any]) -> None:
    """Tasks per second (mean ± std) with the ideal line."""
    counts, means, _ = _series(document, "tasks_per_second")
    _plot_measured(ax, document, "tasks_per_second", "max", ("tab:orange", "tab:brown"),
                   [means[0] * n / counts[0] for n in counts], "throughput (tasks/s)",
                   "Throughput vs workers")


def plot_speedup(ax: Axes, document: dict[str, Any]) -> None:
    """Speedup against the smallest worker count: measured, ideal, ideal on this machine."""
    rows = document["summary"]
    counts = [r["workers"] for r in rows]
    base = rows[0]["wall_seconds"]["mean"]
    errors = [base * r["wall_seconds"]["std"] / r["wall_seconds"]["mean"] ** 2 for r in rows]
    ax.errorbar(counts, [r["speedup"] for r in rows], yerr=errors, marker="o", capsize=5,
                linewidth=2, color="tab:red", label="measured (mean times)")
    ax.plot(counts, [r["speedup_best"] for r in rows], "s:", color="tab:pink",
            label="measured (fastest runs)")
    ax.plot(counts, [r["ideal_speedup"] for r in rows], "--", color="tab:green",
            label="ideal (linear)")
    ax.plot(counts, [r["ideal_speedup_on_cores"] for r in rows], "-.", color="tab:purple",
            label="ideal on this machine (capped at cores)")
    _worker_axis(ax, counts, document["machine"]["cpu_count_logical"])
    ax.set_ylabel(f"speedup (x, vs {counts[0]} worker{'s' if counts[0] > 1 else ''})")
    ax.set_ylim(bottom=0)
    ax.set_title("Speedup: actual vs ideal")
    _legend(ax)


PLOTS = {
    "throughput_execution_time.png": plot_time,
    "throughput_tasks_per_second.png": plot_throughput,
    "throughput_speedup.png": plot_speedup,
}


def write_plots(document: dict[str, Any], output_dir: Path) -> list[Path]:
    """Each plot on its own, then the overview; return the files written."""
    written = []
    for name, draw in PLOTS.items():
        fig, ax = new_figure(subtitle(document))
        draw(ax, document)
        written.append(save(fig, output_dir / name))
    fig, axes = new_figure(subtitle(document), columns=3)
    for ax, draw in zip(axes, PLOTS.values(), strict=True):
        draw(ax, document)
    written.append(save(fig, output_dir / "throughput_overview.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    """Read the throughput JSON and write the PNGs."""
    args = parse_args(argv)
    if not args.input.exists():
        print(f"error: {args.input} not found; run analysis/task_throughput_analysis.py first",
              file=sys.stderr)
        return 1
    for path in write_plots(read_json(args.input), args.output_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
