"""This project as a benchmarked system, selectable by path (``--project-root``).

The dispatcher and workers run from the project root's own code (their cwd), with that root's
``.venv`` python when it has one; only the harness comes from this repository.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import BenchError, clean_env
from benchmarks.pg import ANALYZE_SETTING, FreshDatabase, analyze, pg_reason
from benchmarks.systems import QueueSystem
from shared.client import QueueClient
from shared.cluster import LocalCluster, wait_until

DISPATCHER_START_SECONDS = 20.0

SUBMIT_BATCH = 1000
"""Tasks per POST /submit-task, as add_task.py sends them."""


def project_python(project_root: Path) -> str:
    """The project's own virtualenv python when it has one, else the harness's python."""
    venv_python = project_root / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


class ProjectCluster(LocalCluster):
    """LocalCluster whose processes run the code of ``project_root`` (not this checkout)."""

    def __init__(self, workdir: Path, project_root: Path, env: dict[str, str] | None = None,
                 ) -> None:
        super().__init__(workdir, {"PYTHONPATH": "", **(env or {})})
        self.project_root = project_root
        self.python = project_python(project_root)
        if not (project_root / "dispatcher" / "__main__.py").exists():
            self.dispatcher_module = "dispatcher.app"  # a checkout from before the gevent server

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        with open(self.workdir / "logs" / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [self.python, *args], cwd=self.project_root, env={**self.env, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def start_dispatcher(self, timeout: float = DISPATCHER_START_SECONDS,
                         ) -> subprocess.Popen[bytes]:
        """Start the dispatcher; BenchError with its last log line if it exits instead."""
        proc = self._spawn("dispatcher", ["-m", self.dispatcher_module])
        self.dispatcher = proc
        wait_until(lambda: proc.poll() is not None or self.healthy(), timeout, 0.05,
                   "dispatcher /health")
        if proc.poll() is not None:
            self.dispatcher = None
            raise BenchError(f"the dispatcher exited with {proc.returncode} at start: "
                             f"{self.last_log_line('dispatcher')}")
        return proc

    def last_log_line(self, name: str) -> str:
        """The last non-empty line a process of this cluster logged (why it stopped)."""
        path = self.workdir / "logs" / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1] if lines else "(no output)"

    def submit_noops(self, count: int, batch: int = SUBMIT_BATCH) -> list[int]:
        """Submit ``count`` noop tasks in batches; return their ids."""
        ids: list[int] = []
        for start in range(0, count, batch):
            size = min(batch, count - start)
            ids.extend(self.submit_many([{"task_type": "noop", "params": {}}] * size))
        return ids


class OurQueue(QueueSystem):
    """This project: a LocalCluster (dispatcher on a temp SQLite DB) and ``python -m worker``."""

    name = "ours"

    def __init__(self, project_root: Path) -> None:
        self.project_root = project_root
        self.settings = {
            "project_root": str(project_root),
            "python": project_python(project_root),
            "store": "SQLite (WAL; submissions and results fsynced before they are answered), "
                     "temp file per run",
            "workers": "python -m worker ID, default settings (POLL_WAIT=1, one task per claim)",
            "enqueue": f"POST /submit-task batches of {SUBMIT_BATCH}",
            "finished_count": "GET /stats tasks.completed",
            "roundtrip": "shared.client.QueueClient: submit() = POST /submit-task, then "
                         "wait() = GET /task/<id>?wait=10",
            "log_level": "INFO (default; one line per task event to a file)",
        }
        self.cluster: ProjectCluster | None = None
        self.client: QueueClient | None = None

    def open(self, workdir: Path) -> None:
        self.cluster = self.start_cluster(workdir)
        self.client = QueueClient(self.cluster.url)

    def start_cluster(self, workdir: Path) -> ProjectCluster:
        """A scratch directory and a started dispatcher on this system's store."""
        cluster = ProjectCluster(workdir / f"{self.name}-{uuid.uuid4().hex[:8]}",
                                 self.project_root, self.store_env())
        try:
            cluster.start_dispatcher()
        except Exception:
            cluster.close()
            raise
        return cluster

    def store_env(self) -> dict[str, str]:
        """The dispatcher's DATABASE_URL; none here: the cluster's temp SQLite file."""
        return {}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _cluster(self) -> ProjectCluster:
        if self.cluster is None:
            raise BenchError(f"{self.name}: not open")
        return self.cluster

    def enqueue_noops(self, count: int) -> None:
        self._cluster().submit_noops(count)

    def start_workers(self, count: int) -> None:
        for index in range(count):
            self._cluster().start_worker(f"bench-{index + 1}")

    def finished_count(self) -> int:
        return int(self._cluster().stats()["tasks"].get("completed", 0))

    def roundtrip(self, timeout: float) -> None:
        if self.client is None:
            raise BenchError(f"{self.name}: not open")
        self.await_task(self.client.submit("noop"), self.client, timeout)

    def await_task(self, task_id: int, client: QueueClient, timeout: float) -> None:
        """Long-poll one task through client; BenchError unless it completed."""
        view = client.wait(task_id, timeout)
        if view["status"] != "completed":
            raise BenchError(f"{self.name}: task {task_id} ended {view['status']}: "
                             f"{view['error']}")

    def pid(self) -> int:
        """The dispatcher's PID."""
        proc = self._cluster().dispatcher
        if proc is None:
            raise BenchError(f"{self.name}: no dispatcher")
        return proc.pid


class OurPgQueue(OurQueue):
    """This project on PostgreSQL: a fresh database per run, named by DATABASE_URL.

    With ``cross=True`` a second dispatcher (B) shares the database: round trips submit
    through the first (A, where the workers are) and wait for the result through B.
    """

    name = "ours-pg"

    def __init__(self, project_root: Path, cross: bool = False) -> None:
        super().__init__(project_root)
        self.cross = cross
        self.database = FreshDatabase("ours")
        self.second: ProjectCluster | None = None
        self.second_client: QueueClient | None = None
        self.settings["store"] = ("PostgreSQL 127.0.0.1:5432, fresh database per run, "
                                  "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<db>")
        self.settings["analyze"] = ANALYZE_SETTING
        # As the PostgreSQL peers are counted: one SELECT on a kept connection. (GET /stats
        # every 20 ms would spend the dispatcher's CPU on the harness, which no peer pays.)
        self.settings["finished_count"] = ("SELECT count(*) FROM tasks WHERE status = "
                                           "'completed'")
        self._count_conn: Any = None
        if cross:
            self.settings["dispatchers"] = ("2 on the same database: A (workers, "
                                            "submissions) and B (result waits)")
            self.settings["roundtrip"] = ("QueueClient(A).submit(), then "
                                          "QueueClient(B).wait() = GET B/task/<id>?wait=10")

    def unavailable(self) -> str | None:
        return pg_reason()

    def store_env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database.url}

    def open(self, workdir: Path) -> None:
        self.database.create()
        try:
            super().open(workdir)
            if self.cross:
                self.second = self.start_cluster(workdir)
                self.second_client = QueueClient(self.second.url)
        except Exception:
            self.close()
            raise

    def finished_count(self) -> int:
        if self._count_conn is None:
            self._count_conn = psycopg.connect(self.database.url, autocommit=True)
        row = self._count_conn.execute(
            "SELECT count(*) FROM tasks WHERE status = 'completed'").fetchone()
        return int(row[0])

    def close(self) -> None:
        if self._count_conn is not None:
            self._count_conn.close()
            self._count_conn = None
        super().close()
        if self.second_client is not None:
            self.second_client.close()
            self.second_client = None
        if self.second is not None:
            self.second.close()
            self.second = None
        self.database.drop()

    def enqueue_noops(self, count: int) -> None:
        super().enqueue_noops(count)
        analyze(self.database.url)

    def roundtrip(self, timeout: float) -> None:
        if not self.cross:
            super().roundtrip(timeout)
            return
        if self.client is None or self.second_client is None:
            raise BenchError(f"{self.name}: not open")
        self.await_task(self.client.submit("noop"), self.second_client, timeout)


def run_add_task(project_root: Path, url: str, count: int) -> list[int]:
    """Run the project's add_task.py for ``count`` noop tasks; return the created ids."""
    args = [project_python(project_root), "add_task.py", str(count), "--type", "noop",
            "--params", "{}", "--url", url, "--json"]
    done = subprocess.run(args, cwd=project_root, env=clean_env(), capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise BenchError(f"add_task.py exited {done.returncode}: {done.stderr.strip()[-300:]}")
    ids: list[Any] = json.loads(done.stdout)["task_ids"]
    return ids
