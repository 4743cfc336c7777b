#!/usr/bin/env python3
"""Submit tasks to the dispatcher.

    python3 add_task.py COUNT LIMIT [ALGORITHM]       COUNT prime tasks up to LIMIT
    python3 add_task.py --type sleep --params '{"seconds": 3}'
    python3 add_task.py 10 1000000 --wait             live progress, then a table of results
    python3 add_task.py status [--watch [SECONDS]]    the queue, workers and reclaims as a table
    python3 add_task.py --split 16 1 10000000000 --wait   one job in 16 parts on any workers
    python3 add_task.py 1 1000000 --delay 60 --max-retries 5 --timeout-seconds 30
    python3 add_task.py retry ID [ID ...]             put failed/cancelled tasks back
    python3 add_task.py schedule --every 60 1000000   a primes task every minute
    python3 add_task.py schedule --cron "*/5 * * * *" --type sleep --params '{"seconds": 1}'
    python3 add_task.py schedules                     list schedules
    python3 add_task.py unschedule ID                 stop a schedule

Prints the created task ids. Exits 1 with a one-line message when the dispatcher is
unreachable or refuses the request, 3 when --wait times out, 4 when a waited task failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

_REPO = Path(__file__).resolve().parent
_VENV_PYTHON = _REPO / ".venv" / "bin" / "python"

try:
    from tqdm import tqdm
except ImportError:  # run with a bare python3: re-run inside the project's virtualenv
    # Compare prefixes, not executables: the venv's python is a symlink to this very binary.
    if _VENV_PYTHON.exists() and Path(sys.prefix).resolve() != _VENV_PYTHON.parent.parent.resolve():
        os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit("error: dependencies missing; run ./quickstart.sh or "
             "'python3 -m pip install -r requirements.txt' first")

sys.path.insert(0, str(_REPO))
from shared.client import (  # noqa: E402
    FINISHED,
    LONG_POLL_SECONDS,
    QueueClient,
    RequestRefused,
    Unreachable,
    WaitTimeout,
)
from shared.config import ConfigError, check_dispatcher_urls, load_config  # noqa: E402

EXIT_ERROR, EXIT_TIMEOUT, EXIT_TASK_FAILED = 1, 3, 4


class CliError(Exception):
    """A one-line message for the user; the CLI exits non-zero with it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments; COUNT/LIMIT/ALGORITHM positional as in the spec."""
    parser = argparse.ArgumentParser(
        description="Submit tasks to the task queue dispatcher.",
        epilog="examples: add_task.py 5 100000 | add_task.py 1 10000000 trial_division --wait"
               " | add_task.py --type monte_carlo_pi --params '{\"samples\": 1000000}'"
               " | add_task.py status --watch",
    )
    parser.add_argument("count", nargs="?", type=int, default=1, help="number of tasks (1)")
    parser.add_argument("limit", nargs="?", type=int, help="primes up to LIMIT")
    parser.add_argument("algorithm", nargs="?", help="sieve (default) or trial_division")
    parser.add_argument("--type", dest="task_type", default="primes", help="task type (primes)")
    parser.add_argument("--params", help="task params as a JSON object")
    parser.add_argument("--priority", type=int, default=0, help="higher runs first (0)")
    parser.add_argument("--split", type=int, metavar="N",
                        help="run each job as a split job of up to N parts (ranges of LIMIT) "
                             "that different workers run; the parts' results are combined")
    parser.add_argument("--wait", action="store_true", help="show progress, then the results")
    parser.add_argument("--timeout", type=float, default=3600.0, help="--wait limit, s (3600)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--url", help="dispatcher URL, or several separated by commas "
                                      "(default DISPATCHER_URL)")
    _lifecycle_options(parser)
    parser.add_argument("--delay", type=float, dest="delay_seconds",
                        help="claimable only this many seconds from now")
    parser.add_argument("--run-at", type=float, dest="run_at",
                        help="claimable only from this time (epoch seconds)")
    return parser.parse_args(argv)


def _lifecycle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-retries", type=int, dest="max_retries",
                        help="retries after the task raises (default DEFAULT_MAX_RETRIES)")
    parser.add_argument("--retry-backoff", type=float, dest="retry_backoff",
                        help="base of the retry backoff, s (default DEFAULT_RETRY_BACKOFF)")
    parser.add_argument("--timeout-seconds", type=float, dest="timeout_seconds",
                        help="fail an attempt that runs longer than this, s (none)")


def parse_command(argv: list[str]) -> argparse.Namespace:
    """The subcommands: retry, schedule, schedules, unschedule."""
    parser = argparse.ArgumentParser(prog="add_task.py", description="Manage tasks and schedules.")
    parser.add_argument("--url", help="dispatcher URL(s) (default DISPATCHER_URL)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True)
    retry = commands.add_parser("retry", help="put failed or cancelled tasks back in the queue")
    retry.add_argument("task_ids", nargs="+", type=int, metavar="ID")
    schedule = commands.add_parser("schedule", help="submit a task every N seconds or on cron")
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, dest="every_seconds", help="period, seconds")
    when.add_argument("--cron", help='cron expression, UTC, e.g. "*/5 * * * *"')
    schedule.add_argument("limit", nargs="?", type=int, help="primes up to LIMIT")
    schedule.add_argument("algorithm", nargs="?", help="sieve (default) or trial_division")
    schedule.add_argument("--type", dest="task_type", default="primes", help="task type")
    schedule.add_argument("--params", help="task params as a JSON object")
    schedule.add_argument("--priority", type=int, default=0)
    _lifecycle_options(schedule)
    listing = commands.add_parser("schedules", help="list the schedules")
    unschedule = commands.add_parser("unschedule", help="stop a schedule")
    unschedule.add_argument("schedule_id", type=int, metavar="ID")
    for sub in (retry, schedule, listing, unschedule):
        sub.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
    return parser.parse_args(argv)


COMMANDS = ("retry", "schedule", "schedules", "unschedule")


def build_tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The task bodies to submit; the dispatcher does the real validation."""
    if args.count < 1:
        raise CliError(f"COUNT must be at least 1, got {args.count}")
    params: dict[str, Any] = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise CliError(f"--params is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise CliError("--params must be a JSON object")
    if args.limit is not None:
        params["limit"] = args.limit
    if args.algorithm is not None:
        params["algorithm"] = args.algorithm
    if args.task_type == "primes" and "limit" not in params:
        raise CliError("give LIMIT (add_task.py COUNT LIMIT [ALGORITHM]) or --params")
    body = {"task_type": args.task_type, "params": params, "priority": args.priority}
    for option in ("max_retries", "retry_backoff", "timeout_seconds", "delay_seconds",
                   "run_at"):
        if getattr(args, option, None) is not None:
            body[option] = getattr(args, option)
    return [body] * args.count


@contextlib.contextmanager
def cli_errors(urls: tuple[str, ...] | list[str]) -> Iterator[None]:
    """Turn the client's connection and refusal errors into one-line :class:`CliError`\ s."""
    try:
        yield
    except Unreachable:
        raise CliError(f"cannot reach the dispatcher ({', '.join(urls)}); is it running?"
                       ) from None
    except RequestRefused as exc:
        hint = ""
        if exc.status == 401:
            hint = " (set DISPATCHER_TOKEN to a token from python -m dispatcher.tokens)"
        raise CliError(f"dispatcher refused the request ({exc.status}): {exc.message}{hint}"
                       ) from None


def run_command(args: argparse.Namespace) -> int:
    """Run a subcommand (retry, schedule, schedules, unschedule); return the exit code."""
    urls = check_dispatcher_urls(args.url, "--url") if args.url else load_config().dispatcher_urls
    with QueueClient(urls, token=load_config().dispatcher_token) as client, cli_errors(urls):
        if args.command == "retry":
            views = [client.retry(task_id) for task_id in args.task_ids]
            _show(args, {"tasks": views},
                  [f"task {v['task_id']} is back in the queue" for v in views])
        elif args.command == "schedule":
            args.count = 1
            [body] = build_tasks(args)
            body.pop("delay_seconds", None)
            body.pop("run_at", None)
            when = ({"every_seconds": args.every_seconds} if args.cron is None
                    else {"cron": args.cron})
            view = client.add_schedule({**body, **when})
            _show(args, view, [f"schedule {view['schedule_id']}: {_period(view)}, "
                               f"next run at {_clock(view['next_run_at'])}"])
        elif args.command == "schedules":
            views = client.schedules()
            _show(args, {"schedules": views},
                  [f"{v['schedule_id']:>4}  {v['task_type']:<12} {_period(v):<24} "
                   f"next {_clock(v['next_run_at'])}  runs {v['runs']}" for v in views]
                  or ["no schedules"])
        else:
            client.delete_schedule(args.schedule_id)
            _show(args, {"schedule_id": args.schedule_id, "deleted": True},
                  [f"schedule {args.schedule_id} deleted"])
    return 0


def _show(args: argparse.Namespace, document: Any, lines: list[str]) -> None:
    print(json.dumps(document) if args.json else "\n".join(lines))


def _period(view: dict[str, Any]) -> str:
    return f"cron {view['cron']!r}" if view["cron"] else f"every {view['every_seconds']:g} s"


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def submit(client: QueueClient, tasks: list[dict[str, Any]]) -> list[int]:
    """Submit in batches (of shared.client.SUBMIT_BATCH); return every created id.

    Each batch carries an Idempotency-Key: one whose answer was lost is sent once more (to the
    next dispatcher of the list) without being stored twice.
    """
    return client.submit_many(tasks)


def wait_all(
    client: QueueClient, ids: list[int], timeout: float, quiet: bool
) -> dict[int, dict[str, Any]]:
    """Long-poll each task until all finish (or the timeout); a progress bar on stderr."""
    deadline = time.monotonic() + timeout
    views: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(ids), unit="task", disable=quiet, file=sys.stderr) as bar:
        for task_id in ids:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return views
                view = client.task(task_id, wait=min(remaining, LONG_POLL_SECONDS))
                if view["status"] in FINISHED:
                    views[task_id] = view
                    bar.update(1)
                    break
                bar.set_postfix_str(f"task {task_id} {view['status']} "
                                    f"{view['progress'] * 100:.0f}%")
    return views


def summarize(result: Any) -> str:
    """A short text form of a result for the table."""
    if not isinstance(result, dict):
        return json.dumps(result)[:60]
    if "prime_count" in result:
        return (f"count={result['prime_count']} largest={result['largest_prime']} "
                f"sum={result['sum_of_primes']} in {result.get('elapsed_seconds', 0):.3f}s")
    shown = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    return json.dumps(shown)[:80]


def print_table(views: dict[int, dict[str, Any]]) -> None:
    """One row per task: id, status, worker, attempt, result or error."""
    print(f"{'task':>6}  {'status':<10} {'worker':<12} {'try':>3}  result")
    for task_id, view in sorted(views.items()):
        outcome = summarize(view["result"]) if view["status"] == "completed" else view["error"]
        print(f"{task_id:>6}  {view['status']:<10} {str(view['worker_id']):<12} "
              f"{view['attempt']:>3}  {outcome}")


def run_split(client: QueueClient, args: argparse.Namespace, job: dict[str, Any]) -> int:
    """Submit COUNT split jobs, optionally wait for them, print; return the exit code."""
    options = {k: v for k, v in job.items() if k not in ("task_type", "params", "priority")}
    groups = [client.submit_split(job["task_type"], job["params"], args.split,
                                  priority=job["priority"], **options)
              for _ in range(args.count)]
    if not args.json:
        for group in groups:
            ids = group["task_ids"]
            print(f"submitted group {group['group_id']}: {len(ids)} part task(s) "
                  f"{' '.join(map(str, ids))}")
    if not args.wait:
        if args.json:
            print(json.dumps({"groups": [{"group_id": g["group_id"], "task_ids": g["task_ids"]}
                                         for g in groups]}))
        return 0
    deadline = time.monotonic() + args.timeout
    views = []
    for group in groups:
        try:
            views.append(client.wait_group(group["group_id"],
                                           max(0.0, deadline - time.monotonic())))
        except WaitTimeout as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
    if args.json:
        print(json.dumps({"groups": views}))
    else:
        print_groups(views)
    return 0 if all(v["status"] == "completed" for v in views) else EXIT_TASK_FAILED


def print_groups(views: list[dict[str, Any]]) -> None:
    """One row per split job: id, status, parts, workers that ran them, combined result."""
    print(f"{'group':>6}  {'status':<10} {'parts':>5}  {'workers':<24} result")
    for view in views:
        workers = sorted({str(p["worker_id"]) for p in view["tasks"] if p["worker_id"]})
        outcome = summarize(view["result"]) if view["status"] == "completed" else view["error"]
        print(f"{view['group_id']:>6}  {view['status']:<10} {view['parts']['total']:>5}  "
              f"{','.join(workers)[:24]:<24} {outcome}")


def run(args: argparse.Namespace) -> int:
    """Submit, optionally wait, print; return the exit code."""
    config = load_config()
    urls = check_dispatcher_urls(args.url, "--url") if args.url else config.dispatcher_urls
    tasks = build_tasks(args)
    if args.split is not None and args.split < 1:
        raise CliError(f"--split must be at least 1, got {args.split}")
    with QueueClient(urls, token=config.dispatcher_token) as client:
        if args.split is not None:
            with cli_errors(urls):
                return run_split(client, args, tasks[0])
        with cli_errors(urls):
            ids = submit(client, tasks)
            if not args.json:
                print(f"submitted {len(ids)} task(s): {' '.join(map(str, ids))}")
            if not args.wait:
                if args.json:
                    print(json.dumps({"task_ids": ids}))
                return 0
            views = wait_all(client, ids, args.timeout, quiet=args.json)
    if args.json:
        print(json.dumps({"task_ids": ids, "tasks": [views[i] for i in sorted(views)]}))
    else:
        print_table(views)
    if len(views) < len(ids):
        print(f"error: {len(ids) - len(views)} task(s) not finished after {args.timeout}s",
              file=sys.stderr)
        return EXIT_TIMEOUT
    failed = [v for v in views.values() if v["status"] != "completed"]
    return EXIT_TASK_FAILED if failed else 0


def status_command(argv: list[str]) -> int:
    """``add_task.py status``: see shared/status.py."""
    from shared.status import main as status_main

    return status_main(argv)


SUBCOMMANDS = {
    "status": status_command,
}
"""Words that, as the first argument, run another command instead of a submission (COUNT is
a number, so no count can be mistaken for one)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: a subcommand, or a submission (``COUNT LIMIT [ALGORITHM]`` as in the spec)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        try:
            return SUBCOMMANDS[argv[0]](argv[1:])
        except KeyboardInterrupt:
            return 130
    # The lifecycle commands (COMMANDS) may follow --url/--json, so they are found by word.
    words = [a for i, a in enumerate(argv)
             if not a.startswith("-") and (i == 0 or argv[i - 1] != "--url")]
    command = words[0] if words else None
    try:
        if command in COMMANDS:
            return run_command(parse_command(argv))
        return run(parse_args(argv))
    except (CliError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
