"""Huey, Celery, RQ and Dramatiq behind the QueueSystem interface.

Each peer keeps its library defaults except what the workload needs (documented in its
``settings``). Every Redis peer gets a database number of its own, flushed before and after
each run, so no two runs see each other's keys.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import HARNESS_ROOT, BenchError, clean_env, redis_reason, spawn, stop
from benchmarks.systems import QueueSystem

REDIS_BASE_URL = "redis://127.0.0.1:6379"
BIN = Path(sys.executable).parent
"""Where pip put the peers' worker commands (huey_consumer, celery, rq, dramatiq)."""


def missing_module(*modules: str) -> str | None:
    """Why a peer cannot run when one of its packages is not installed, else None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"package {module!r} is not installed (pip install -r requirements-bench.txt)"
    return None


class WorkerProcesses:
    """The worker processes of one peer run, stopped by PID (process group) on close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir: Path | None = None

    def start(self, args: list[str], env: dict[str, str], label: str) -> None:
        """Start one worker command from the harness root (so ``benchmarks`` imports)."""
        assert self.workdir is not None
        log = self.workdir / "logs" / f"{self.name}-{label}.log"
        self.procs.append(spawn(args, HARNESS_ROOT, log, clean_env(env)))

    def check_running(self) -> None:
        """Raise BenchError if a worker already exited (bad arguments, import error)."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"{self.name}: a worker exited with {proc.returncode}; "
                                 f"see the logs in {self.workdir}")

    def stop_all(self) -> None:
        """Stop every worker started here."""
        stop(self.procs)
        self.procs = []


class RedisPeer(QueueSystem):
    """A peer whose broker and results live in one Redis database of its own."""

    db: int

    def __init__(self) -> None:
        self.url = f"{REDIS_BASE_URL}/{self.db}"
        self.workers = WorkerProcesses(self.name)
        self._redis: Any = None

    modules: tuple[str, ...] = ("redis",)

    def unavailable(self) -> str | None:
        return missing_module(*self.modules) or redis_reason(self.url)

    def open(self, workdir: Path) -> None:
        import redis

        self.workers.workdir = workdir
        self._redis = redis.Redis.from_url(self.url)
        self._redis.flushdb()

    def close(self) -> None:
        self.workers.stop_all()
        if self._redis is not None:
            self._redis.flushdb()
            self._redis.close()
            self._redis = None

    def env(self) -> dict[str, str]:
        """Environment for this peer's workers."""
        return {"BENCH_REDIS_URL": self.url}


class HueyQueue(RedisPeer):
    """Huey on SQLite (SqliteHuey) or on Redis (RedisHuey)."""

    modules = ("huey",)

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"huey-{kind}"
        self.db = 11
        super().__init__()
        self.sqlite_path = ""
        self.huey: Any = None
        self.noop: Any = None
        self.settings = {
            "store": ("SqliteHuey, library defaults (WAL, fsync off, polling consumer)"
                      if kind == "sqlite" else
                      "RedisHuey, library defaults (blocking BRPOP dequeue)"),
            "workers": "2 x huey_consumer with defaults: -w 1 -k thread, -d 0.1 -b 1.15 -m 10",
            "enqueue": "noop() per task",
            "finished_count": "huey.result_count() (results are stored: the task returns True)",
            "roundtrip": "noop().get(blocking=True, timeout=10) (polls: 0.1 s first, x1.15)",
        }

    def unavailable(self) -> str | None:
        if self.kind == "sqlite":
            return missing_module("huey")
        return super().unavailable()

    def open(self, workdir: Path) -> None:
        from benchmarks.peers.huey_app import build

        self.workers.workdir = workdir
        if self.kind == "redis":
            super().open(workdir)
        self.sqlite_path = str(workdir / f"huey-{uuid.uuid4().hex[:8]}.db")
        self.huey, self.noop = build(self.kind, self.sqlite_path, self.url)

    def close(self) -> None:
        self.workers.stop_all()
        self.huey = None
        if self.kind == "redis":
            super().close()

    def env(self) -> dict[str, str]:
        return {"BENCH_HUEY_KIND": self.kind, "BENCH_HUEY_SQLITE": self.sqlite_path,
                "BENCH_REDIS_URL": self.url}

    def enqueue_noops(self, count: int) -> None:
        for _ in range(count):
            self.noop()

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self.workers.start([str(BIN / "huey_consumer"), "benchmarks.peers.huey_app.huey"],
                               self.env(), f"consumer-{index + 1}")

    def finished_count(self) -> int:
        self.workers.check_running()
        return int(self.huey.result_count())

    def roundtrip(self, timeout: float) -> None:
        if self.noop().get(blocking=True, timeout=timeout) is not True:
            raise BenchError("huey: wrong result")


class CeleryQueue(RedisPeer):
    """Celery with Redis as broker and result backend."""

    name = "celery"
    db = 12
    modules = ("celery", "redis")

    def __init__(self) -> None:
        super().__init__()
        self.app: Any = None
        self.noop: Any = None
        self.settings = {
            "store": "Redis broker + Redis result backend, Celery defaults "
                     "(prefetch multiplier 4, early ack, gossip/mingle/heartbeat on)",
            "workers": "2 x `celery worker -c 1` (prefork pool, one child each)",
            "enqueue": "noop.delay() per task",
            "finished_count": "number of celery-task-meta-* keys in Redis",
            "roundtrip": "noop.delay().get(timeout=10) (pub/sub on the result key)",
        }

    def open(self, workdir: Path) -> None:
        from benchmarks.peers.celery_app import build

        super().open(workdir)
        self.app, self.noop = build(self.url)

    def close(self) -> None:
        super().close()
        if self.app is not None:
            self.app.close()
            self.app = None

    def enqueue_noops(self, count: int) -> None:
        for _ in range(count):
            self.noop.delay()

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self.workers.start(
                [str(BIN / "celery"), "-A", "benchmarks.peers.celery_app", "worker", "-c", "1",
                 "-n", f"bench{index + 1}@%h", "--loglevel", "WARNING"],
                self.env(), f"worker-{index + 1}")

    def finished_count(self) -> int:
        self.workers.check_running()
        return len(self._redis.keys("celery-task-meta-*"))

    def roundtrip(self, timeout: float) -> None:
        if self.noop.delay().get(timeout=timeout) is not True:
            raise BenchError("celery: wrong result")


class RQQueue(RedisPeer):
    """RQ: the default forking Worker, or SimpleWorker (runs jobs in the worker process)."""

    db = 13
    modules = ("rq", "redis")

    def __init__(self, simple: bool = False) -> None:
        self.simple = simple
        self.name = "rq-simple" if simple else "rq"
        super().__init__()
        self.queue: Any = None
        worker = "SimpleWorker (no fork per job)" if simple else "Worker (default: forks per job)"
        self.settings = {
            "store": "Redis, RQ defaults",
            "workers": f"2 x `rq worker` with {worker}",
            "enqueue": "queue.enqueue(noop) per task",
            "finished_count": "queue.finished_job_registry.count",
            "roundtrip": "queue.enqueue(noop).latest_result(timeout=10) (blocking stream read)",
        }

    def open(self, workdir: Path) -> None:
        from rq import Queue

        super().open(workdir)
        self.queue = Queue("bench", connection=self._redis)

    def enqueue_noops(self, count: int) -> None:
        for _ in range(count):
            self.queue.enqueue("benchmarks.peers.tasks.noop")

    def start_workers(self, count: int) -> None:
        extra = ["-w", "rq.worker.SimpleWorker"] if self.simple else []
        for index in range(count):
            self.workers.start(
                [str(BIN / "rq"), "worker", "--url", self.url, "--name",
                 f"bench-{uuid.uuid4().hex[:6]}-{index + 1}", *extra, "bench"],
                self.env(), f"worker-{index + 1}")

    def finished_count(self) -> int:
        self.workers.check_running()
        return int(self.queue.finished_job_registry.count)

    def roundtrip(self, timeout: float) -> None:
        job = self.queue.enqueue("benchmarks.peers.tasks.noop")
        result = job.latest_result(timeout=int(timeout))
        if result is None or result.return_value is not True:
            raise BenchError(f"rq: no result for job {job.id}")


class DramatiqQueue(RedisPeer):
    """Dramatiq with the Redis broker and the Redis Results backend."""

    name = "dramatiq"
    db = 14
    modules = ("dramatiq", "redis")

    def __init__(self) -> None:
        super().__init__()
        self.noop: Any = None
        self.settings = {
            "store": "RedisBroker + Results(RedisBackend), Dramatiq defaults otherwise",
            "workers": "`dramatiq -p 2 -t 1`: 2 worker processes x 1 thread "
                       "(default is one process per core x 8 threads)",
            "enqueue": "noop.send() per task",
            "finished_count": "Redis keys that are not the broker's (dramatiq:*)",
            "roundtrip": "noop.send().get_result(block=True, timeout=10000) (BRPOPLPUSH)",
        }

    def open(self, workdir: Path) -> None:
        super().open(workdir)
        # Dramatiq's broker is process-wide: dramatiq_app reads the URL once, at import.
        os.environ["BENCH_REDIS_URL"] = self.url
        from benchmarks.peers import dramatiq_app

        self.noop = dramatiq_app.noop

    def enqueue_noops(self, count: int) -> None:
        for _ in range(count):
            self.noop.send()

    def start_workers(self, count: int) -> None:
        self.workers.start([str(BIN / "dramatiq"), "benchmarks.peers.dramatiq_app", "-p",
                            str(count), "-t", "1"], self.env(), "workers")

    def finished_count(self) -> int:
        self.workers.check_running()
        return int(self._redis.dbsize()) - len(self._redis.keys("dramatiq:*"))

    def roundtrip(self, timeout: float) -> None:
        message = self.noop.send()
        if message.get_result(block=True, timeout=int(timeout * 1000)) is not True:
            raise BenchError("dramatiq: wrong result")


def all_peers() -> list[QueueSystem]:
    """Every peer, in the order of the results table."""
    return [HueyQueue("sqlite"), HueyQueue("redis"), CeleryQueue(), RQQueue(),
            RQQueue(simple=True), DramatiqQueue()]
