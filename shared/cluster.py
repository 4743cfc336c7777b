"""Real dispatcher and worker processes on loopback, for tests, analysis and chaos runs.

Everything started here is stopped here, by PID; nothing is looked up by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

from shared.client import QueueClient
from shared.config import REPO_ROOT
from shared.utils import free_port, split_urls

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not become true before its deadline."""


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.02, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return it, or raise WaitTimeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


class LocalCluster:
    """Dispatchers and workers in a scratch directory, each dispatcher on a free port.

    The first dispatcher is :attr:`dispatcher` at :attr:`url`; more can be added over the
    same database (:meth:`add_dispatcher`, PostgreSQL), and workers started afterwards get the
    list of all of them in ``DISPATCHER_URL``.
    """

    dispatcher_module = "dispatcher"
    """What ``python -m`` runs to start the dispatcher."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = self.workdir / "tasks.db"
        self.env = {
            **os.environ,
            "DISPATCHER_HOST": "127.0.0.1",
            "DISPATCHER_PORT": str(self.port),
            "DISPATCHER_URL": self.url,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "RUN_DIR": str(self.workdir / "run"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.others: dict[str, tuple[subprocess.Popen[bytes] | None, dict[str, str]]] = {}
        """The added dispatchers by URL: (process, or None once killed; its extra environment)."""
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.http = requests.Session()
        if self.env.get("DISPATCHER_TOKEN"):
            self.http.headers["Authorization"] = f"Bearer {self.env['DISPATCHER_TOKEN']}"
        self._client: QueueClient | None = None

    # -- processes ------------------------------------------------------------------------

    def _spawn(
        self, name: str, args: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by Popen
        try:
            return subprocess.Popen(
                [sys.executable, *args], cwd=REPO_ROOT, env={**self.env, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def start_dispatcher(self, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        """Start the dispatcher and wait until /health answers."""
        self.dispatcher = self._spawn("dispatcher", ["-m", self.dispatcher_module])
        wait_until(self.healthy, timeout, interval=0.05, message="dispatcher /health")
        return self.dispatcher

    def start_worker(
        self, worker_id: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one worker process (it registers with its first claim or heartbeat).

        ``env`` adds to (or overrides) the cluster's environment for this worker only.
        """
        proc = self._spawn(f"worker-{worker_id}", ["-m", "worker", worker_id, *args], env)
        self.workers[worker_id] = proc
        return proc

    def start_supervisor(
        self, worker_id: str, processes: int | str, *args: str,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a worker supervisor running ``processes`` workers ``worker_id-1``... .

        It is kept with the workers under ``worker_id`` (so :meth:`close` stops it, and its
        children with it); its log and its children's are :meth:`worker_log` of ``worker_id``.
        """
        proc = self._spawn(f"worker-{worker_id}",
                           ["-m", "worker.supervisor", worker_id, "--processes", str(processes),
                            *args], env)
        self.workers[worker_id] = proc
        return proc

    def child_pid(self, name: str) -> int | None:
        """The PID of a supervised worker (by its worker id) from its PID file, if it runs."""
        path = Path(self.env["RUN_DIR"]) / "children" / f"worker-{name}.pid"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def signal_worker(self, worker_id: str, sig: int) -> None:
        """Send a signal to one worker we started."""
        self.workers[worker_id].send_signal(sig)

    def kill_worker(self, worker_id: str) -> None:
        """SIGKILL a worker and reap it."""
        proc = self.workers[worker_id]
        proc.kill()
        proc.wait(timeout=10)

    def restart_worker(self, worker_id: str, *args: str) -> subprocess.Popen[bytes]:
        """SIGKILL a worker (if it runs) and start a new process under the same worker id."""
        if self.workers[worker_id].poll() is None:
            self.kill_worker(worker_id)
        return self.start_worker(worker_id, *args)

    def pause_worker(self, worker_id: str) -> None:
        """SIGSTOP a worker: the process and all its threads freeze (a zombie in the making)."""
        self.paused.add(worker_id)
        self.signal_worker(worker_id, signal.SIGSTOP)

    def resume_worker(self, worker_id: str) -> None:
        """SIGCONT a paused worker."""
        self.signal_worker(worker_id, signal.SIGCONT)
        self.paused.discard(worker_id)

    def worker_log(self, worker_id: str) -> str:
        """Everything the worker's processes (all instances under this id) have logged."""
        path = self.workdir / "logs" / f"worker-{worker_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def restart_dispatcher(self, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        """SIGKILL the dispatcher and start it again on the same port and database."""
        self.kill_dispatcher()
        return self.start_dispatcher(timeout)

    def kill_dispatcher(self) -> None:
        """SIGKILL the dispatcher and reap it."""
        if self.dispatcher is not None:
            self.dispatcher.kill()
            self.dispatcher.wait(timeout=10)
            self.dispatcher = None

    def add_dispatcher(self, env: Mapping[str, str] | None = None, timeout: float = 20.0) -> str:
        """Start one more dispatcher on its own port over the same database; its URL.

        ``env`` adds to its environment (e.g. a skewed clock). ``DISPATCHER_URL`` then lists
        every dispatcher, for the workers and clients started afterwards.
        """
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.others[url] = (None, {"DISPATCHER_PORT": str(port), **(env or {})})
        self.env["DISPATCHER_URL"] = ",".join([self.url, *self.others])
        self.start_dispatcher_at(url, timeout)
        return url

    def start_dispatcher_at(self, url: str, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        """(Re)start the added dispatcher at ``url`` and wait until /health answers."""
        proc, env = self.others[url]
        port = env["DISPATCHER_PORT"]
        proc = self._spawn(f"dispatcher-{port}", ["-m", self.dispatcher_module], env)
        self.others[url] = (proc, env)
        wait_until(lambda: self.healthy(url), timeout, interval=0.05,
                   message=f"dispatcher {url} /health")
        return proc

    def kill_dispatcher_at(self, url: str) -> None:
        """SIGKILL the dispatcher at ``url`` (the first one, or an added one) and reap it."""
        if url == self.url:
            return self.kill_dispatcher()
        proc, env = self.others[url]
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        self.others[url] = (None, env)

    @property
    def database_url(self) -> str:
        """The database every dispatcher of this cluster uses (``DATABASE_URL``)."""
        return self.env["DATABASE_URL"]

    @property
    def urls(self) -> tuple[str, ...]:
        """The dispatcher URLs its workers use: ``DISPATCHER_URL`` if given, else its own."""
        return split_urls(self.env["DISPATCHER_URL"])

    @property
    def client(self) -> QueueClient:
        """The public client over :attr:`urls` (made on first use, closed with the cluster)."""
        if self._client is None:
            self._client = QueueClient(self.urls, token=self.env.get("DISPATCHER_TOKEN", ""))
        return self._client

    def healthy(self, url: str | None = None) -> bool:
        """True when the dispatcher (the first, or the one at ``url``) answers /health with 200."""
        try:
            return self.http.get(f"{url or self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def close(self, grace: float = 10.0) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL after ``grace``."""
        dispatchers = [self.dispatcher] + [proc for proc, _ in self.others.values()]
        procs = list(self.workers.values()) + [p for p in dispatchers if p is not None]
        for worker_id in list(self.paused):  # a stopped process would sit on its SIGTERM
            if self.workers[worker_id].poll() is None:
                self.resume_worker(worker_id)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.http.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP helpers ---------------------------------------------------------------------

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        """POST JSON to the dispatcher."""
        return self.http.post(f"{self.url}{path}", json=body, timeout=kwargs.pop("timeout", 35),
                              **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET from the dispatcher."""
        return self.http.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 35), **kwargs)

    def submit(self, task_type: str, params: dict[str, Any], **extra: Any) -> int:
        """Submit one task; return its id."""
        resp = self.post("/submit-task", {"task_type": task_type, "params": params, **extra})
        resp.raise_for_status()
        return resp.json()["task_id"]

    def submit_many(self, tasks: list[dict[str, Any]]) -> list[int]:
        """Submit a batch; return the ids."""
        resp = self.post("/submit-task", {"tasks": tasks})
        resp.raise_for_status()
        return resp.json()["task_ids"]

    def task(self, task_id: int) -> dict[str, Any]:
        """The task's current view."""
        resp = self.get(f"/task/{task_id}")
        resp.raise_for_status()
        return resp.json()

    def wait_finished(self, task_id: int, timeout: float) -> dict[str, Any]:
        """Long-poll until the task finishes; raise WaitTimeout otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            view = self.get(f"/task/{task_id}", params={"wait": max(0, min(remaining, 10))}).json()
            if view["status"] in ("completed", "failed", "cancelled"):
                return view
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} still {view['status']} after {timeout}s")

    def stats(self) -> dict[str, Any]:
        """The /stats document."""
        return self.get("/stats").json()
