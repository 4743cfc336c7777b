"""Where does the drain's time go? py-spy on the dispatcher and one worker during a drain.

    python -m benchmarks.profile_drain [--tasks 5000] [--project-root DIR] [--rate 250]

Writes the collapsed stacks (``*.folded``; load them in speedscope or flamegraph.pl) and a
summary JSON next to the results, and prints the top functions by own ("self") time and by
inclusive time, plus a roll-up by library. Needs py-spy (requirements-bench.txt) and ptrace
rights (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import HARNESS_ROOT, BenchError, wait_for
from benchmarks.ours import OurQueue

RESULTS_DIR = HARNESS_ROOT / "benchmarks" / "results"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
IDLE_LEAVES = ("Condition.wait", "Event.wait", "select", "poll", "epoll", "_physical_pull")
"""Leaf functions of threads that wait for work (long polls, the server's event loop): py-spy
counts some of them as active, this summary does not."""
LIBRARIES = ("sqlite3", "gevent", "psycopg", "werkzeug", "flask", "pydantic", "json", "logging",
             "requests", "urllib3", "http", "socket", "threading", "selectors", "dispatcher",
             "worker", "tasks", "shared")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise BenchError("py-spy is not installed (pip install -r requirements-bench.txt)")
    return found


def _record(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([_py_spy(), "record", "--pid", str(pid), "--format", "raw",
                             "--rate", str(rate), "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_recording(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return stack.split(";"), int(count)


def _label(frame: str, with_line: bool = False) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    where = f"{match['file']}:{match['line']}" if with_line and match["line"] else match["file"]
    return f"{match['func']} ({where})"


def _idle(frame: str) -> bool:
    match = FRAME.match(frame)
    return bool(match) and match["func"] in IDLE_LEAVES


def _library(frame: str) -> str:
    match = FRAME.match(frame)
    path = match["file"] if match else frame
    parts = re.split(r"[/\\.]", path)
    for name in LIBRARIES:
        if name in parts:
            return name
    return "other"


def summarise(folded: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and inclusive samples, and self samples per library.

    Samples whose innermost frame waits for work (IDLE_LEAVES) are counted apart, not in the
    percentages. Native code (SQLite, socket calls) counts as the Python line that called it,
    hence the table by line.
    """
    own, own_lines, inclusive, libraries = Counter(), Counter(), Counter(), Counter()
    total = idle = 0
    for line in folded.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if _idle(frames[-1]):
            idle += count
            continue
        total += count
        own[_label(frames[-1])] += count
        own_lines[_label(frames[-1], with_line=True)] += count
        for label in {_label(f) for f in frames}:
            inclusive[label] += count
        libraries[_library(frames[-1])] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "samples": v, "percent": round(100 * v / max(total, 1), 1)}
                for k, v in counter.most_common(top)]

    return {"samples": total, "idle_samples": idle, "self": share(own),
            "self_by_line": share(own_lines), "inclusive": share(inclusive),
            "self_by_library": share(libraries)}


def profile(project_root: Path, tasks: int, rate: int, out_dir: Path) -> dict[str, Any]:
    """Run one drain of ``tasks`` no-ops with py-spy attached; summaries per process."""
    system = OurQueue(project_root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    files = {"dispatcher": out_dir / f"profile-{stamp}-dispatcher.folded",
             "worker": out_dir / f"profile-{stamp}-worker.folded"}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        system.open(Path(tmp))
        recorders = []
        try:
            system.enqueue_noops(tasks)
            recorders.append(_record(system.pid(), files["dispatcher"], rate))
            started = time.monotonic()
            system.start_workers(2)
            cluster = system.cluster
            assert cluster is not None
            recorders.append(_record(cluster.workers["bench-1"].pid, files["worker"], rate))
            wait_for(lambda: system.finished_count() >= tasks, 600, f"{tasks} results")
            seconds = time.monotonic() - started
        finally:
            for recorder in recorders:
                _stop_recording(recorder)
            system.close()
    return {"tasks": tasks, "seconds": seconds, "tasks_per_second": tasks / seconds,
            "rate_hz": rate, "files": {k: str(v) for k, v in files.items()},
            **{k: summarise(v) for k, v in files.items() if v.exists()}}


def format_summary(result: dict[str, Any]) -> str:
    """The profile as text."""
    lines = [f"drain of {result['tasks']} tasks under py-spy: {result['tasks_per_second']:.0f}"
             " tasks/s (sampling slows it a little)"]
    for proc in ("dispatcher", "worker"):
        if proc not in result:
            continue
        lines.append(f"\n{proc}: {result[proc]['samples']} busy samples "
                     f"({result[proc]['idle_samples']} more waiting for work, left out)")
        for title, key in (("own time by library", "self_by_library"),
                           ("own time by function", "self"),
                           ("own time by line (native calls count as their caller)",
                            "self_by_line"),
                           ("inclusive time by function", "inclusive")):
            lines.append(f"  {title}:")
            lines += [f"    {row['percent']:5.1f}%  {row['function']}" for row in result[proc][key]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--project-root", type=Path, default=HARNESS_ROOT)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = profile(args.project_root.resolve(), args.tasks, args.rate, args.out_dir)
    summary = args.out_dir / Path(result["files"]["dispatcher"]).name.replace(
        "-dispatcher.folded", ".json")
    summary.write_text(json.dumps(result, indent=2) + "\n")
    print(format_summary(result))
    print(f"\nsummary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
