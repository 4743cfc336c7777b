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

from benchmarks.common import BenchError, clean_env
from benchmarks.systems import QueueSystem
from shared.client import QueueClient
from shared.cluster import LocalCluster

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

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        with open(self.workdir / "logs" / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [self.python, *args], cwd=self.project_root, env={**self.env, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

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
        self.cluster = ProjectCluster(workdir / f"ours-{uuid.uuid4().hex[:8]}", self.project_root)
        try:
            self.cluster.start_dispatcher()
        except Exception:
            self.cluster.close()
            raise
        self.client = QueueClient(self.cluster.url)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _cluster(self) -> ProjectCluster:
        if self.cluster is None:
            raise BenchError("ours: not open")
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
            raise BenchError("ours: not open")
        task_id = self.client.submit("noop")
        view = self.client.wait(task_id, timeout)
        if view["status"] != "completed":
            raise BenchError(f"ours: task {task_id} ended {view['status']}: {view['error']}")

    def pid(self) -> int:
        """The dispatcher's PID."""
        proc = self._cluster().dispatcher
        if proc is None:
            raise BenchError("ours: no dispatcher")
        return proc.pid


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
