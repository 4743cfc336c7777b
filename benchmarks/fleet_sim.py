"""Simulated peers of the dispatcher in one asyncio process: idle workers or submitting clients.

    python -m benchmarks.fleet_sim workers --url URL --out FILE --first 0 --count 150 --total 300
    python -m benchmarks.fleet_sim clients --url URL --out FILE --connections 50

``benchmarks/fleet.py`` starts several of these at once. Each one touches ``FILE.ready`` once
its peers run, goes on until SIGTERM, then lets the requests in flight finish, writes every
request it made to FILE (JSON) and exits. Timestamps are ``time.monotonic()``, one clock for
every process on Linux, so the parent can cut the records to its measuring window.

A simulated worker does on the wire what an idle ``python -m worker`` does (worker/worker.py,
worker/heartbeat.py): one keep-alive connection beating ``POST /heartbeat`` every second on a
monotonic schedule with 1 s timeouts, another looping ``POST /get-task`` long polls of 1 s with
the worker's timeouts and backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.fleet_http import Answer, HttpConnection, ProtocolError, build_request
from worker.client import Backoff

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = (1.0, 1.0)
"""(connect, read) seconds, as worker.config.WorkerConfig.heartbeat_timeout."""
POLL_WAIT = 1.0
CLAIM_TIMEOUT = (2.0, POLL_WAIT + 5.0)
"""(connect, read) seconds, as worker.config.WorkerConfig.claim_timeout."""
BACKOFF_BASE, BACKOFF_MAX = 0.1, 5.0
SUBMIT_TIMEOUT = (5.0, 10.0)
ERROR_PAUSE_SECONDS = 0.05
"""A client pauses this long after a failed submission, so a refusing server is not spun on."""
STOP_GRACE_SECONDS = 10.0
"""After SIGTERM, requests in flight get this long to finish (a claim times out after 7 s)."""
NOOP_TASK = {"task_type": "noop", "params": {}}

Record = list[Any]


async def timed_call(conn: HttpConnection, request: bytes,
                     timeout: tuple[float, float]) -> tuple[str, float, Answer | None]:
    """Send one request; (outcome, seconds, answer).

    The outcome is the status as text, "timeout", or "error:<exception class>".
    """
    started = time.monotonic()
    try:
        answer = await conn.exchange(request, *timeout)
    except TimeoutError:
        return "timeout", time.monotonic() - started, None
    except (OSError, ProtocolError) as exc:
        return f"error:{type(exc).__name__}", time.monotonic() - started, None
    return str(answer.status), time.monotonic() - started, answer


class SimulatedWorker:
    """One idle worker: a heartbeat loop and a claim loop, each on its own connection."""

    def __init__(self, index: int, worker_id: str, host: str, port: int,
                 records: dict[str, list[Record]], stop: asyncio.Event) -> None:
        self.index, self._records, self._stop = index, records, stop
        self._host, self._port = host, port
        instance_id = uuid.uuid4().hex
        self._beat = build_request("POST", host, port, "/heartbeat", {
            "worker_id": worker_id, "instance_id": instance_id, "tasks": []})
        self._claim = build_request("POST", host, port, "/get-task", {
            "worker_id": worker_id, "instance_id": instance_id, "wait": POLL_WAIT,
            "max_tasks": 1, "results": []})

    async def run(self, delay: float) -> None:
        """Start after ``delay`` seconds; beat and claim until stopped."""
        await asyncio.sleep(delay)
        await asyncio.gather(self._beat_loop(), self._claim_loop())

    async def _beat_loop(self) -> None:
        conn = HttpConnection(self._host, self._port)
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if self._stop.is_set():
                    break
                started = time.monotonic()
                outcome, seconds, _ = await timed_call(conn, self._beat, HEARTBEAT_TIMEOUT)
                self._records["heartbeats"].append([self.index, next_at, started, seconds,
                                                    outcome])
                # Like worker.heartbeat.Heartbeat: skip beats missed while blocked, no burst.
                next_at = max(next_at + HEARTBEAT_INTERVAL, time.monotonic())
        finally:
            conn.close()
            self._records["connects"]["heartbeat"] += conn.connects

    async def _claim_loop(self) -> None:
        conn = HttpConnection(self._host, self._port)
        backoff = Backoff(BACKOFF_BASE, BACKOFF_MAX)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                outcome, seconds, answer = await timed_call(conn, self._claim, CLAIM_TIMEOUT)
                self._records["claims"].append([self.index, started, seconds, outcome])
                if outcome == "200":
                    backoff.reset()
                    continue
                at_least = (answer.retry_after or 0.0) if answer is not None else 0.0
                await asyncio.sleep(backoff.next_delay(at_least))
        finally:
            conn.close()
            self._records["connects"]["claim"] += conn.connects


async def submit_loop(index: int, conn: HttpConnection, request: bytes,
                      records: list[Record], stop: asyncio.Event) -> None:
    """POST single no-op tasks one after the other on one connection until stopped."""
    while not stop.is_set():
        started = time.monotonic()
        outcome, seconds, _ = await timed_call(conn, request, SUBMIT_TIMEOUT)
        records.append([index, started, seconds, outcome])
        if outcome != "201":
            await asyncio.sleep(ERROR_PAUSE_SECONDS)
    conn.close()


async def _open_all(conns: list[HttpConnection], timeout: float) -> int:
    """Open every connection at once; how many failed."""
    done = await asyncio.gather(*(c.open(timeout) for c in conns), return_exceptions=True)
    return sum(1 for item in done if isinstance(item, BaseException))


def start_workers(args: argparse.Namespace, host: str, port: int, records: dict[str, Any],
                  stop: asyncio.Event) -> list[Awaitable[None]]:
    """The simulated workers of this process; start times spread evenly over ``--ramp``."""
    runs = []
    for offset in range(args.count):
        index = args.first + offset
        worker = SimulatedWorker(index, f"sim-{args.proc}-{offset}", host, port, records, stop)
        runs.append(worker.run(args.ramp * index / max(1, args.total)))
    return runs


async def start_clients(args: argparse.Namespace, host: str, port: int,
                        records: dict[str, Any], stop: asyncio.Event) -> list[Awaitable[None]]:
    """Open every client connection first, then one submission loop per connection."""
    request = build_request("POST", host, port, "/submit-task", NOOP_TASK)
    conns = [HttpConnection(host, port) for _ in range(args.connections)]
    records["open_failures"] = await _open_all(conns, SUBMIT_TIMEOUT[0])
    return [submit_loop(args.first + i, conn, request, records["submissions"], stop)
            for i, conn in enumerate(conns)]


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the peers until SIGTERM; every request they made."""
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    records: dict[str, Any] = {"heartbeats": [], "claims": [], "submissions": [],
                               "connects": {"heartbeat": 0, "claim": 0}}
    if args.mode == "workers":
        runs = start_workers(args, host, port, records, stop)
    else:
        runs = await start_clients(args, host, port, records, stop)
    tasks = [asyncio.ensure_future(run) for run in runs]
    Path(f"{args.out}.ready").touch()
    await stop.wait()
    records["stopped_at"] = time.monotonic()
    _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    records["cancelled_in_flight"] = len(late)
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("workers", "clients"))
    parser.add_argument("--url", required=True, help="the dispatcher's base URL")
    parser.add_argument("--out", required=True, help="result JSON; FILE.ready marks readiness")
    parser.add_argument("--proc", type=int, default=0, help="this simulator's number (worker ids)")
    parser.add_argument("--first", type=int, default=0, help="global index of the first peer")
    parser.add_argument("--count", type=int, default=1, help="simulated workers here")
    parser.add_argument("--total", type=int, default=1, help="simulated workers in all processes")
    parser.add_argument("--ramp", type=float, default=1.0,
                        help="seconds over which the workers' first beats are spread")
    parser.add_argument("--connections", type=int, default=1, help="client connections here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Simulate, then write the records to --out."""
    args = parse_args(argv)
    records = asyncio.run(simulate(args))
    tmp = Path(f"{args.out}.tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(args.out)  # the parent never reads half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
