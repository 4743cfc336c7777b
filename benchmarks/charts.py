"""Bar charts of one result file: docs/images/bench_*.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend

OURS_COLOR, PEER_COLOR, BASE_COLOR = "#d95f02", "#7570b3", "#1b9e77"
CROSS_LABEL = "ours-pg, 2 disp."
"""The cross-dispatcher round trip, drawn beside the round trips of one dispatcher."""


def _color(system: str) -> str:
    if system.startswith("ours"):
        return OURS_COLOR
    return BASE_COLOR if system == "pg-bare" else PEER_COLOR


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str],
          errors: list[tuple[float, float]] | None = None, fmt: str = "{:,.0f}") -> None:
    positions = range(len(labels))
    yerr = None
    if errors:
        yerr = [[v - lo for v, (lo, _) in zip(values, errors, strict=True)],
                [hi - v for v, (_, hi) in zip(values, errors, strict=True)]]
    bars = ax.bar(positions, values, color=colors, yerr=yerr, capsize=3)
    ax.set_xticks(list(positions), labels, rotation=20, ha="right")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")


def _subtitle(report: dict[str, Any]) -> str:
    meta = report["meta"]
    return (f"{meta['cpu_count']} CPUs, {meta['repeats']} repeat(s), medians"
            f"{' - QUICK sizes' if meta['quick'] else ''}; "
            f"project {str(meta['project_commit'])[:10]}")


def _queue_chart(report: dict[str, Any], workload: str, title: str, ylabel: str,
                 path: Path, extra: str | None = None,
                 more: dict[str, Any] | None = None) -> Path | None:
    systems = {**((report["results"].get(workload) or {}).get("systems") or {}), **(more or {})}
    if not systems:
        return None
    metric = report["results"][workload]["metric"]
    labels = list(systems)
    values = [systems[s]["median"] for s in labels]
    spans = [(min(r[metric] for r in systems[s]["runs"]),
              max(r[metric] for r in systems[s]["runs"])) for s in labels]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, labels, values, [_color(s) for s in labels], spans,
          "{:,.0f}" if metric == "tasks_per_second" else "{:.1f}")
    if extra:
        ax.plot(range(len(labels)), [systems[s][extra] for s in labels], "k_", markersize=14,
                label=extra.replace("_ms", ""))
        ax.legend()
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{_subtitle(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cross_bar(report: dict[str, Any]) -> dict[str, Any]:
    cross = ((report["results"].get("cross_roundtrip") or {}).get("systems") or {}).get("ours-pg")
    return {CROSS_LABEL: cross} if cross else {}


def _kernel_chart(report: dict[str, Any], path: Path) -> Path | None:
    kern = report["results"].get("kernels") or {}
    panels = [(key, kern[key]) for key in ("sieve", "window", "trial_division")
              if isinstance(kern.get(key), dict)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.5))
    for ax, (key, data) in zip(list(axes) if len(panels) > 1 else [axes], panels, strict=True):
        names = [n for n, v in data.items() if isinstance(v, dict) and "median_seconds" in v]
        _bars(ax, names, [data[n]["median_seconds"] for n in names],
              [OURS_COLOR if n == "ours" else BASE_COLOR for n in names], fmt="{:.3g}")
        ax.set_yscale("log")
        ax.set_ylabel("seconds (log)")
        span = (f"({data['start']:.4g}, {data['end']:.4g}]" if key == "window"
                else f"up to {data.get('limit', 0):.0e}")
        ax.set_title(f"{key.replace('_', ' ')} {span}", fontsize=10)
    fig.suptitle(f"Prime kernels\n{_subtitle(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ours_chart(report: dict[str, Any], path: Path) -> Path | None:
    results = report["results"]
    panels = []
    sub = results.get("submission") or {}
    if "batch" in sub:
        names = [n for n in ("batch", "batch_10000", "add_task_cli", "single_requests") if n in sub]
        panels.append(("submission, tasks/s", names, [sub[n]["median"] for n in names], "{:,.0f}"))
    big = results.get("big_queue") or {}
    if "big" in big and "claim_p50_ms" in big["big"]:
        labels = [f"{big[k]['pending']:,} pending" for k in ("small", "big")]
        panels.append(("claim p50, ms", labels, [big[k]["claim_p50_ms"] for k in ("small", "big")],
                       "{:.2f}"))
        panels.append(("dispatcher RSS, MiB", labels, [big[k]["rss_mib"] for k in ("small", "big")],
                       "{:.0f}"))
    scal = results.get("scaling") or {}
    if "speedup" in scal:
        panels.append((f"{scal['tasks']} sieve tasks, s", ["1 worker", "2 workers"],
                       [scal["one_worker_seconds"], scal["two_workers_seconds"]], "{:.1f}"))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.2))
    for ax, (title, labels, values, fmt) in zip(list(axes) if len(panels) > 1 else [axes], panels,
                                                strict=True):
        _bars(ax, labels, values, [OURS_COLOR] * len(values), fmt=fmt)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"This project alone\n{_subtitle(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every chart the results allow; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = (report["results"].get("drain") or {}).get("tasks")
    drawn = [
        _queue_chart(report, "drain", f"Drain: {tasks} no-op tasks, 2 worker processes",
                     "tasks/s", out_dir / "bench_drain.png"),
        _queue_chart(report, "roundtrip", "Idle round trip: submit one task, wait for its result",
                     "p50 latency, ms (marker: p90)", out_dir / "bench_roundtrip.png", "p90_ms",
                     _cross_bar(report)),
        _kernel_chart(report, out_dir / "bench_kernels.png"),
        _ours_chart(report, out_dir / "bench_ours.png"),
    ]
    return [path for path in drawn if path is not None]
