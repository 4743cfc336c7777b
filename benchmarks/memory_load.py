"""The dispatcher's peak memory under concurrent maximum-size requests.

    python -m benchmarks.memory_load [--threads 32] [--rounds 3] [--database-url URL]

Starts a dispatcher (a temp SQLite file unless ``--database-url``), then ``threads`` clients
each POST ``rounds`` bodies of MAX_REQUEST_BYTES at once: half one long string, half a list of
millions of numbers (parsed, that is the larger in memory), plus a small valid submission per
round. Meanwhile /health is timed. Prints the answers by status, the slowest /health and the
dispatcher's peak resident memory (VmHWM from /proc). The in-flight body budget
(BODY_BUDGET_BYTES) answers what does not fit 503 + Retry-After, unread, so the peak stays
near one or two parsed bodies whatever the concurrency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared.cluster import LocalCluster
from shared.config import Config

SMALL = json.dumps({"task_type": "noop", "params": {"i": 1}}).encode()


def max_size_bodies(size: int) -> list[bytes]:
    """Two bodies of exactly ``size`` bytes: one long string, one long list of numbers."""
    head, tail = b'{"task_type":"noop","params":{"blob":"', b'"}}'
    text = head + b"x" * (size - len(head) - len(tail)) + tail
    head, tail = b'{"task_type":"noop","params":{"v":[', b"0]}}"
    count = (size - len(head) - len(tail)) // 2
    numbers = head + b"0," * count + tail
    numbers = numbers[:-len(tail)] + b" " * (size - len(numbers)) + tail
    return [text, numbers]


@dataclass
class LoadResult:
    """What the load saw: answers by status (or error), the slowest /health in seconds."""

    statuses: Counter[str] = field(default_factory=Counter)
    health_max: float = 0.0
    health_failures: int = 0


def _post(port: int, body: bytes, token: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/submit-task", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def _watch_health(port: int, stop: threading.Event, result: LoadResult) -> None:
    while not stop.is_set():
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        result.health_max = max(result.health_max, time.monotonic() - started)
        result.health_failures += 0 if ok else 1
        stop.wait(0.1)


def run_load(port: int, body_bytes: int, threads: int = 32, rounds: int = 3,
             token: str = "") -> LoadResult:
    """Send the load to a dispatcher on ``port``; what it answered."""
    bodies = max_size_bodies(body_bytes)
    result = LoadResult()
    lock = threading.Lock()

    def client(index: int) -> None:
        for round_ in range(rounds):
            for body in (bodies[(index + round_) % 2], SMALL):
                status = _post(port, body, token)
                with lock:
                    result.statuses[status] += 1

    stop = threading.Event()
    watcher = threading.Thread(target=_watch_health, args=(port, stop, result), daemon=True)
    watcher.start()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    watcher.join()
    return result


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def main(argv: list[str] | None = None) -> int:
    """Run the load once against a fresh dispatcher and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_load",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="default: a temp SQLite file")
    args = parser.parse_args(argv)
    size = Config().max_request_bytes
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DATABASE_URL": args.database_url} if args.database_url else {}
        with LocalCluster(Path(tmp), env) as cluster:
            cluster.start_dispatcher()
            pid = cluster.dispatcher.pid  # type: ignore[union-attr]
            idle = peak_rss_mib(pid)
            started = time.monotonic()
            result = run_load(cluster.port, size, args.threads, args.rounds)
            elapsed = time.monotonic() - started
            peak = peak_rss_mib(pid)
    print(f"load: {args.threads} threads x {args.rounds} rounds of {size:,}-byte bodies "
          f"(+ a small submission each), {elapsed:.1f} s")
    print("answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items())))
    print(f"slowest /health during the load: {result.health_max:.3f} s "
          f"({result.health_failures} failed)")
    print(f"dispatcher peak RSS (VmHWM): {peak:.1f} MiB (after start: {idle:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
