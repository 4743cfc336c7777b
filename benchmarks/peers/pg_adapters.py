"""Procrastinate, PgQueuer and a bare SKIP LOCKED loop behind the QueueSystem interface.

Each run gets a freshly created, uniquely named database on the local PostgreSQL server
(dropped after the run), with the peer's schema installed by the peer's own tooling. Each
peer keeps its library defaults except what the workload needs (documented in ``settings``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HARNESS_ROOT, BenchError, clean_env
from benchmarks.peers.adapters import WorkerProcesses, missing_module
from benchmarks.pg import ANALYZE_SETTING, FreshDatabase, analyze, pg_reason
from benchmarks.systems import QueueSystem

SCHEMA_TIMEOUT_SECONDS = 120.0
PROCRASTINATE_POLL_SECONDS = 0.001
"""How often the round trip reads a Procrastinate job's status (it has no completion event)."""
PROCRASTINATE_APP = "benchmarks.peers.procrastinate_app.app"
PGQUEUER_FACTORY = "benchmarks.peers.pgqueuer_app:main"


class PgPeer(QueueSystem):
    """A peer whose queue lives in a fresh PostgreSQL database of its own for each run."""

    modules: tuple[str, ...] = ("psycopg",)

    def __init__(self) -> None:
        self.database = FreshDatabase(self.name)
        self.workers = WorkerProcesses(self.name)
        self.url = ""
        self._conn: Any = None

    def unavailable(self) -> str | None:
        return missing_module(*self.modules) or pg_reason()

    def open(self, workdir: Path) -> None:
        import psycopg

        self.workers.workdir = workdir
        self.url = self.database.create()
        try:
            self.install(workdir)
            self._conn = psycopg.connect(self.url, autocommit=True)
            self.connect()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.workers.stop_all()
        self.disconnect()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.database.drop()

    def install(self, workdir: Path) -> None:
        """Install the peer's schema into the fresh database."""

    def enqueue_noops(self, count: int) -> None:
        self.enqueue(count)
        analyze(self.url)

    def enqueue(self, count: int) -> None:
        """Enqueue ``count`` no-op tasks with the peer's fastest normal client API."""
        raise NotImplementedError

    def connect(self) -> None:
        """Open the harness's client of the peer (after install)."""

    def disconnect(self) -> None:
        """Close what connect() opened; safe when it did not run."""

    def env(self) -> dict[str, str]:
        """Environment of the peer's processes: the run's database."""
        return {"BENCH_PG_URL": self.url}

    def run_tool(self, args: list[str], workdir: Path, label: str) -> None:
        """Run one of the peer's commands to completion (schema tools); BenchError if it fails."""
        log = workdir / "logs" / f"{self.name}-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(args, cwd=HARNESS_ROOT, env=clean_env(self.env()),
                              capture_output=True, text=True, timeout=SCHEMA_TIMEOUT_SECONDS,
                              check=False)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise BenchError(f"{self.name}: {' '.join(args[1:4])} exited {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()[-300:]}")

    def count(self, query: str) -> int:
        """The single number one SELECT returns, read on the harness's connection."""
        self.workers.check_running()
        row = self._conn.execute(query).fetchone()
        return int(row[0])


class ProcrastinateQueue(PgPeer):
    """Procrastinate on PostgreSQL: its CLI worker, its jobs table as the count."""

    name = "procrastinate"
    modules = ("procrastinate", "psycopg")

    def __init__(self) -> None:
        super().__init__()
        self.app: Any = None
        self.noop: Any = None
        self.settings = {
            "analyze": ANALYZE_SETTING,
            "store": "PostgreSQL 127.0.0.1:5432, fresh database per run, schema by "
                     "`procrastinate schema --apply`; PsycopgConnector, library defaults",
            "workers": "2 x `procrastinate worker --concurrency 1` (the default concurrency; "
                       "LISTEN/NOTIFY on, polling fallback every 5 s, jobs kept after success, "
                       "default log level INFO: two lines per job, to a file)",
            "task": "async def noop() -> True",
            "enqueue": "noop.batch_defer() of all tasks at once",
            "finished_count": "SELECT count(*) FROM procrastinate_jobs WHERE status = "
                              "'succeeded'",
            "roundtrip": "noop.defer(), then app.job_manager.get_job_status(id, connection=c) "
                         f"every {PROCRASTINATE_POLL_SECONDS * 1000:g} ms until 'succeeded', on "
                         "one connection c kept open for the polls "
                         "(Procrastinate has no result backend and sends no completion "
                         "NOTIFY; the poll interval bounds the latency added)",
        }

    def install(self, workdir: Path) -> None:
        self.run_tool([sys.executable, "-m", "procrastinate", "--app", PROCRASTINATE_APP,
                       "schema", "--apply"], workdir, "schema")

    def connect(self) -> None:
        from benchmarks.peers.procrastinate_app import build

        self.app, self.noop = build(self.url)
        self.app.open()

    def disconnect(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    def enqueue(self, count: int) -> None:
        self.noop.batch_defer(*({} for _ in range(count)))

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self.workers.start([sys.executable, "-m", "procrastinate", "--app", PROCRASTINATE_APP,
                                "worker", "--concurrency", "1", "--name", f"bench-{index + 1}"],
                               self.env(), f"worker-{index + 1}")

    def finished_count(self) -> int:
        return self.count("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")

    def roundtrip(self, timeout: float) -> None:
        from procrastinate.jobs import Status

        job_id = self.noop.defer()
        deadline = time.monotonic() + timeout
        while (status := self._status(job_id)) != Status.SUCCEEDED:
            if status in (Status.FAILED, Status.CANCELLED, Status.ABORTED):
                raise BenchError(f"procrastinate: job {job_id} ended {status.value}")
            if time.monotonic() > deadline:
                raise BenchError(f"procrastinate: job {job_id} still {status.value}")
            time.sleep(PROCRASTINATE_POLL_SECONDS)


    def _status(self, job_id: int) -> Any:
        # One connection kept for the polls: through the pool each poll would first check its
        # connection (one more round trip) and lengthen the poll interval the wait adds.
        return self.app.job_manager.get_job_status(job_id, connection=self._conn)


class PgQueuerQueue(PgPeer):
    """PgQueuer on PostgreSQL (asyncpg): ``pgq run`` consumers, CompletionWatcher round trips."""

    name = "pgqueuer"
    modules = ("pgqueuer", "asyncpg", "psycopg")

    def __init__(self) -> None:
        super().__init__()
        self._runner: asyncio.Runner | None = None
        self._asyncpg: Any = None
        self._queries: Any = None
        self._watcher: Any = None
        self.settings = {
            "analyze": ANALYZE_SETTING,
            "store": "PostgreSQL 127.0.0.1:5432, fresh database per run, schema by "
                     "`pgq install` (default durability: logged tables)",
            "workers": "2 x `pgq run benchmarks.peers.pgqueuer_app:main`, defaults: batch "
                       "size 10, dequeue timeout 30 s (LISTEN/NOTIFY wakes it), status log "
                       "flushed every 0.1 s or per 10 jobs; one asyncpg connection each; "
                       "default log level INFO (nothing per job)",
            "task": "async entrypoint noop(job) -> None",
            "enqueue": "Queries.enqueue() of all tasks in one call (asyncpg)",
            "finished_count": "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
            "roundtrip": "Queries.enqueue('noop', None), then CompletionWatcher.wait_for(id) "
                         "(LISTEN/NOTIFY + status query, defaults: 50 ms debounce, 5 s "
                         "safety poll), one watcher open for the whole run",
        }

    def install(self, workdir: Path) -> None:
        self.run_tool([sys.executable, "-m", "pgqueuer", "--pg-dsn", self.url, "install"],
                      workdir, "install")

    def connect(self) -> None:
        self._runner = asyncio.Runner()
        self._runner.run(self._connect())

    async def _connect(self) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries
        from pgqueuer.core.completion import CompletionWatcher

        self._asyncpg = await asyncpg.connect(self.url)
        driver = AsyncpgDriver(self._asyncpg)
        self._queries = Queries(driver)
        self._watcher = CompletionWatcher(driver, queries=self._queries)
        await self._watcher.__aenter__()

    def disconnect(self) -> None:
        if self._runner is None:
            return
        self._runner.run(self._disconnect())
        self._runner.close()
        self._runner = None

    async def _disconnect(self) -> None:
        if self._watcher is not None:
            await self._watcher.__aexit__(None, None, None)
            self._watcher = None
        if self._asyncpg is not None:
            await self._asyncpg.close()
            self._asyncpg = None

    def _run(self, coroutine: Any) -> Any:
        if self._runner is None:
            raise BenchError("pgqueuer: not open")
        return self._runner.run(coroutine)

    def enqueue(self, count: int) -> None:
        self._run(self._queries.enqueue(["noop"] * count, [None] * count, [0] * count))

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self.workers.start([sys.executable, "-m", "pgqueuer", "run", PGQUEUER_FACTORY],
                               self.env(), f"consumer-{index + 1}")

    def finished_count(self) -> int:
        return self.count("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")

    def roundtrip(self, timeout: float) -> None:
        status = self._run(self._roundtrip(timeout))
        if status != "successful":
            raise BenchError(f"pgqueuer: job ended {status}")

    async def _roundtrip(self, timeout: float) -> str:
        (job_id,) = await self._queries.enqueue("noop", None)
        try:
            return str(await asyncio.wait_for(self._watcher.wait_for(job_id), timeout))
        except TimeoutError:
            raise BenchError(f"pgqueuer: job {job_id} not finished after {timeout}s") from None


class BarePgQueue(PgPeer):
    """The baseline: a plain table and ``python -m benchmarks.peers.pg_bare`` workers."""

    name = "pg-bare"

    def __init__(self) -> None:
        super().__init__()
        from benchmarks.peers import pg_bare

        self.bare = pg_bare
        self._listener: Any = None
        self.settings = {
            "analyze": ANALYZE_SETTING,
            "store": "PostgreSQL 127.0.0.1:5432, fresh database per run: one table "
                     "bare_jobs(id, status, payload) + a partial index of pending ids; server "
                     "defaults (synchronous_commit on)",
            "workers": f"2 x `python -m benchmarks.peers.pg_bare`: claim "
                       f"{pg_bare.CLAIM_BATCH} rows with UPDATE ... WHERE id IN (SELECT ... "
                       "FOR UPDATE SKIP LOCKED LIMIT 32) RETURNING, then one UPDATE marks them "
                       "done (+ NOTIFY bare_done); each statement its own autocommit "
                       "transaction; LISTEN bare_new when the table is empty",
            "task": "none: a claimed row is marked done at once",
            "enqueue": "one INSERT ... SELECT FROM generate_series",
            "finished_count": "SELECT count(*) FROM bare_jobs WHERE status = 'done'",
            "roundtrip": "INSERT + NOTIFY bare_new, then wait on LISTEN bare_done for the id "
                         "(a baseline of PostgreSQL's own wake-ups)",
        }

    def install(self, workdir: Path) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            self.bare.install(conn)

    def connect(self) -> None:
        import psycopg

        self._listener = psycopg.connect(self.url, autocommit=True)
        self._listener.execute(self.bare.QUERIES["listen_done"])

    def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def enqueue(self, count: int) -> None:
        self._conn.execute(self.bare.QUERIES["enqueue_many"], {"count": count})

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self.workers.start([sys.executable, "-m", "benchmarks.peers.pg_bare", self.url],
                               {}, f"worker-{index + 1}")

    def finished_count(self) -> int:
        return self.count(self.bare.QUERIES["done_count"])

    def roundtrip(self, timeout: float) -> None:
        (job_id, _) = self._conn.execute(self.bare.QUERIES["enqueue_one"]).fetchone()
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            for note in self._listener.notifies(timeout=remaining, stop_after=1):
                if str(job_id) in note.payload.split(","):
                    return
        raise BenchError(f"pg-bare: job {job_id} not done after {timeout}s")


def pg_peers() -> list[QueueSystem]:
    """Every PostgreSQL peer, in the order of the results table."""
    return [ProcrastinateQueue(), PgQueuerQueue(), BarePgQueue()]
