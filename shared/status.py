"""``add_task.py status [--watch [SECONDS]]``: the /stats picture as a table in the terminal.

Tasks by status, throughput, reclaims by cause, and one row per worker (state, heartbeat age,
tasks completed, tasks held). ``--watch`` redraws it in place every few seconds until Ctrl-C;
``--json`` prints /stats as it is. Plain text and ANSI only (no extra dependency).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, TextIO

from shared.client import QueueClient, RequestRefused, Unreachable
from shared.config import ConfigError, check_dispatcher_urls, load_config

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
EXIT_ERROR = 1
WATCH_SECONDS = 2.0
MAX_TASKS_SHOWN = 8


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments of the status command."""
    parser = argparse.ArgumentParser(prog="add_task.py status",
                                     description="Show the queue: tasks, workers, reclaims.")
    parser.add_argument("--watch", nargs="?", type=float, const=WATCH_SECONDS, metavar="SECONDS",
                        help=f"redraw every SECONDS ({WATCH_SECONDS:g}) until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print /stats as JSON")
    parser.add_argument("--url", help="dispatcher URL, or several separated by commas "
                                      "(default DISPATCHER_URL)")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch SECONDS must be positive")
    return args


def render(stats: dict[str, Any], url: str) -> str:
    """The /stats document as a readable block of text."""
    tasks, workers = stats["tasks"], stats["workers"]
    throughput, monitor = stats["throughput"], stats.get("monitor", {})
    lines = [f"dispatcher {url}   up {_duration(stats.get('uptime_seconds', 0))}"
             f"   last sweep {_seconds(monitor.get('last_sweep_seconds_ago'))} ago", ""]
    lines.append("tasks      " + "  ".join(f"{name} {count}" for name, count in tasks.items()))
    lines.append(f"throughput {throughput['tasks_per_second']:g} tasks/s "
                 f"({throughput['completed']} completed in the last "
                 f"{throughput['window_seconds']:g} s)")
    lines.append("reclaims   " + "  ".join(f"{cause} {count}"
                                           for cause, count in stats["reclaims"].items()))
    lines.append(f"workers    alive {workers['alive']}  dead {workers['dead']}  "
                 f"total {workers['total']}")
    lines.append("")
    lines.extend(_worker_table(workers["details"]))
    return "\n".join(lines)


def _worker_table(details: list[dict[str, Any]]) -> list[str]:
    if not details:
        return ["(no worker has registered yet)"]
    width = max(len("worker"), *(len(w["worker_id"]) for w in details))
    rows = [f"{'worker':<{width}}  {'state':<8} {'heartbeat':>10} {'completed':>9}  current tasks"]
    for worker in details:
        state = worker["status"] if worker["status"] != "alive" or worker["alive"] else "silent"
        held = worker["current_tasks"]
        shown = " ".join(map(str, held[:MAX_TASKS_SHOWN]))
        if len(held) > MAX_TASKS_SHOWN:
            shown += f" (+{len(held) - MAX_TASKS_SHOWN})"
        rows.append(f"{worker['worker_id']:<{width}}  {state:<8} "
                    f"{_seconds(worker['seconds_since_heartbeat']) + ' ago':>10} "
                    f"{worker['tasks_completed']:>9}  {shown or '-'}")
    return rows


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def show(client: QueueClient, args: argparse.Namespace, out: TextIO) -> None:
    """Print one picture (raises Unreachable / RequestRefused)."""
    stats = client.stats()
    if args.json:
        out.write(json.dumps(stats) + "\n")
    else:
        out.write(render(stats, client.url) + "\n")
    out.flush()


def watch(client: QueueClient, args: argparse.Namespace, out: TextIO) -> None:
    """Redraw every ``args.watch`` seconds until interrupted; an outage is shown, not fatal."""
    redraw = out.isatty() and not args.json
    while True:
        if redraw:
            out.write(CLEAR)
        try:
            show(client, args, out)
        except (Unreachable, RequestRefused) as exc:
            out.write(f"cannot read /stats from {client.url}: {exc} (retrying)\n")
            out.flush()
        if not redraw:
            out.write("\n")
        time.sleep(args.watch)  # the refresh period of a display, not a synchronisation


def main(argv: list[str]) -> int:
    """Run ``add_task.py status``; the exit code."""
    args = parse_args(argv)
    try:
        config = load_config()
        urls = check_dispatcher_urls(args.url, "--url") if args.url else config.dispatcher_urls
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    # Ctrl-C ends --watch even when started where SIGINT is ignored (a background job of a
    # script, a test runner's worker): Python installs no handler for an ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with QueueClient(urls, token=config.dispatcher_token) as client:
        try:
            if args.watch is not None:
                watch(client, args, sys.stdout)
            show(client, args, sys.stdout)
        except KeyboardInterrupt:
            return 0
        except Unreachable:
            print(f"error: cannot reach the dispatcher ({', '.join(urls)}); is it running?",
                  file=sys.stderr)
            return EXIT_ERROR
        except RequestRefused as exc:
            print(f"error: dispatcher refused the request ({exc.status}): {exc.message}",
                  file=sys.stderr)
            return EXIT_ERROR
    return 0
