"""One command per host: run N worker processes and restart the ones that die.

``python -m worker.supervisor WORKER_ID --processes N [worker options]`` (what
``./start_worker.sh WORKER_ID --processes N`` runs for N > 1) starts the workers
``WORKER_ID-1`` ... ``WORKER_ID-N`` as child processes and stays in the foreground:

* A child that dies (crash, ``kill -9``, OOM) is started again under the same name. At once,
  before the new process is even up, the supervisor tells the dispatcher with one heartbeat
  for that worker id under a new instance id, marked ``stopping`` (:meth:`Supervisor.announce_exit`):
  the dispatcher requeues what the dead instance held (reclaim cause ``worker_restarted``)
  instead of waiting ``HEARTBEAT_TIMEOUT``, and shows the worker as stopped until the new
  process registers. The task resumes from its last checkpoint on whichever worker claims it.
  (Without that heartbeat, e.g. with the dispatcher unreachable, the new process's first
  heartbeat or claim has the same effect, or the dispatcher's dead-worker timeout.) A child that keeps dying
  quickly is restarted after a growing delay (``--restart-delay`` doubling up to
  ``--restart-delay-max``; back to no delay once a child has lived ``--stable-after``
  seconds), so a poison task cannot fork-bomb the host. Every exit is logged with its cause
  and every restart with its delay.
* A child that exits with :data:`~worker.config.CONFIG_ERROR_EXIT` (bad configuration or
  flags: it never contacted a dispatcher) stops the supervisor with the same exit code
  instead of a restart loop; the child's one-line error is on the shared stderr.
* A child whose task ignored its timeout ends itself with
  :data:`~worker.config.TASK_OVERRAN_EXIT` (75, the worker's watchdog): a crash like any other,
  so it is started again (the dispatcher has already failed that task as ``timed_out``).
* A child that exits 0 on its own (``--burst``, ``--max-tasks``) is done and not restarted;
  the supervisor exits 0 once every child is done.
* The first SIGTERM/SIGINT is forwarded once to every child (each checkpoints, releases its
  task and exits 0) and the supervisor exits 0 when they are gone; a second one SIGKILLs
  them and exits 1. Children run in their own process groups, so a terminal's Ctrl-C reaches
  them only through the supervisor (one signal each, a warm stop).
* On Linux each child asks the kernel for SIGTERM when the supervisor dies
  (``prctl(PR_SET_PDEATHSIG)``), so a SIGKILLed supervisor leaves no worker behind: each
  makes the same warm stop.

Each child's PID is written to ``RUN_DIR/children/worker-<name>.pid`` while it runs (for
``cleanup.sh``); the supervisor's own PID file is written by ``start_worker.sh``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from shared.config import (
    LOG_LEVELS,
    REPO_ROOT,
    ConfigError,
    check_dispatcher_urls,
    load_config,
    resolve_process_count,
)
from shared.utils import configure_logging
from worker.config import CONFIG_ERROR_EXIT, TASK_OVERRAN_EXIT

log = logging.getLogger("worker.supervisor")

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies (Linux)."""

POLL_SECONDS = 0.05
"""How often the supervisor looks for exited children (and pending restarts)."""

ANNOUNCE_TIMEOUT = (0.5, 1.0)
"""(connect, read) timeouts of the heartbeat announcing a dead child, per dispatcher tried."""


def child_names(worker_id: str, count: int) -> list[str]:
    """The worker ids of the children: ``WORKER_ID-1`` ... ``WORKER_ID-N``."""
    return [f"{worker_id}-{i}" for i in range(1, count + 1)]


def restart_delay(quick_exits: int, base: float, cap: float) -> float:
    """Seconds to wait before the next start after ``quick_exits`` quick deaths in a row.

    The first death of a child that had lived a while restarts it at once (0 quick exits
    before it); then ``base``, ``2*base``, ``4*base``... up to ``cap``.
    """
    if quick_exits <= 0:
        return 0.0
    return min(cap, base * 2 ** (quick_exits - 1))


def exit_cause(returncode: int) -> str:
    """A process's end in words: ``exit code 1`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == TASK_OVERRAN_EXIT:
        return f"exit code {returncode} (its task ignored its timeout; ended by its watchdog)"
    return f"exit code {returncode}"


def _parent_death_signal() -> object:
    """A ``preexec_fn`` that makes the child get SIGTERM when the supervisor dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    parent = os.getpid()

    def set_pdeathsig() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return set_pdeathsig


@dataclass
class Child:
    """One supervised worker process and its restart history."""

    name: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    start_at: float = 0.0
    """When to (re)start it (monotonic), while ``proc`` is None and not done."""
    done: bool = False
    """Exited 0 on its own (``--burst``, ``--max-tasks``): not restarted."""
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Runs the children, restarts the dead ones, and stops them all on a signal."""

    def __init__(
        self, worker_id: str, count: int, worker_args: list[str], run_path: Path, *,
        restart_delay: float = 1.0, restart_delay_max: float = 30.0, stable_after: float = 10.0,
        dispatcher_urls: tuple[str, ...] = (), token: str = "",
    ) -> None:
        self.worker_id = worker_id
        self.children = [Child(name) for name in child_names(worker_id, count)]
        self.worker_args = worker_args
        self.pid_dir = run_path / "children"
        self.base, self.cap, self.stable_after = restart_delay, restart_delay_max, stable_after
        self.signals = 0
        self._preexec = _parent_death_signal()
        self.dispatcher_urls = dispatcher_urls
        self._http = requests.Session()
        if token:  # DISPATCHER_TOKEN, the children's too (a worker token bound to ``id-*``)
            self._http.headers["Authorization"] = f"Bearer {token}"

    # -- signals --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT only count; the main loop acts on the count."""

        def handle(signum: int, frame: object) -> None:
            self.signals += 1

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- children -------------------------------------------------------------------------

    def _pid_file(self, child: Child) -> Path:
        return self.pid_dir / f"worker-{child.name}.pid"

    def _start(self, child: Child) -> None:
        cmd = [sys.executable, "-m", "worker", child.name, *self.worker_args]
        child.proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
            cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, process_group=0,
            preexec_fn=self._preexec,  # noqa: PLW1509 - the supervisor has no threads
        )
        child.started_at = time.monotonic()
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self._pid_file(child).write_text(f"{child.proc.pid}\n")
        log.info("started worker %s (pid %d)%s", child.name, child.proc.pid,
                 f", restart {child.restarts}" if child.restarts else "")

    def _reap(self, child: Child) -> int | None:
        """The child's exit code if it has exited (then forgotten), else None."""
        if child.proc is None:
            return None
        code = child.proc.poll()
        if code is None:
            return None
        lived = time.monotonic() - child.started_at
        log.log(logging.INFO if code == 0 else logging.WARNING,
                "worker %s (pid %d) exited: %s after %.1f s", child.name, child.proc.pid,
                exit_cause(code), lived)
        self._pid_file(child).unlink(missing_ok=True)
        child.proc = None
        child.exit_codes.append(code)
        if lived >= self.stable_after:
            child.quick_exits = 0
        return code

    def announce_exit(self, child: Child) -> None:
        """Tell the dispatcher a child died, so its tasks are requeued now, not after a timeout.

        One heartbeat for the child's worker id with a new instance id, holding nothing and
        marked ``stopping``: the dispatcher requeues what the dead instance held
        (``worker_restarted``) and shows the worker as stopped until the new process
        registers. It carries DISPATCHER_TOKEN when one is configured (a worker token bound
        to ``WORKER_ID-*`` covers every child). The dispatchers are tried in order; failures
        only cost the timeout.
        """
        body = {"worker_id": child.name, "instance_id": uuid.uuid4().hex, "tasks": [],
                "stopping": True}
        for url in self.dispatcher_urls:
            try:
                reply = self._http.post(f"{url}/heartbeat", json=body, timeout=ANNOUNCE_TIMEOUT)
            except requests.RequestException as exc:
                log.warning("could not tell %s that worker %s died (%s)", url, child.name,
                            type(exc).__name__)
                continue
            if reply.status_code in (401, 403):
                log.warning("%s refused to hear that worker %s died (HTTP %d): DISPATCHER_TOKEN "
                            "is missing, revoked or not bound to this worker id", url,
                            child.name, reply.status_code)
                continue
            if reply.status_code < 500:
                log.info("told %s that worker %s died: its tasks are requeued (HTTP %d)", url,
                         child.name, reply.status_code)
                return
        if self.dispatcher_urls:
            log.warning("no dispatcher told that worker %s died: its tasks come back when the "
                        "new process registers or after HEARTBEAT_TIMEOUT", child.name)

    def _schedule_restart(self, child: Child) -> None:
        delay = restart_delay(child.quick_exits, self.base, self.cap)
        child.quick_exits += 1
        child.restarts += 1
        child.start_at = time.monotonic() + delay
        log.warning("restarting worker %s in %.2f s (quick exits in a row: %d)", child.name, delay,
                    child.quick_exits)

    def _running(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None]

    def _signal_all(self, sig: int) -> None:
        for child in self._running():
            try:
                child.proc.send_signal(sig)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped, a child cannot start, or every child is done; the exit code."""
        log.info("supervisor (pid %d) running %d worker processes: %s", os.getpid(),
                 len(self.children), ", ".join(c.name for c in self.children))
        for child in self.children:
            self._start(child)
        try:
            return self._loop()
        finally:
            self._signal_all(signal.SIGKILL)  # only if something above raised
            for child in self.children:
                if child.proc is not None:
                    child.proc.wait()
                    self._pid_file(child).unlink(missing_ok=True)

    def _loop(self) -> int:
        while True:
            if self.signals:
                return self._stop()
            for child in self.children:
                code = self._reap(child)
                if code is None:
                    continue
                if code == CONFIG_ERROR_EXIT:
                    log.error("worker %s cannot start (exit code %d: configuration error, its "
                              "message is above); stopping all workers", child.name, code)
                    return self._stop(exit_code=CONFIG_ERROR_EXIT)
                if code == 0:
                    log.info("worker %s is done (exited 0 on its own); not restarted", child.name)
                    child.done = True
                else:
                    self._schedule_restart(child)
                    self.announce_exit(child)
            now = time.monotonic()
            for child in self.children:
                if child.proc is None and not child.done and child.start_at <= now:
                    self._start(child)
            if all(c.done for c in self.children):
                log.info("every worker is done; supervisor exiting")
                self._http.close()
                return 0
            time.sleep(POLL_SECONDS)

    def _stop(self, exit_code: int = 0) -> int:
        """Warm stop: one SIGTERM to each child, wait for all; a second signal SIGKILLs them."""
        handled = self.signals
        log.info("supervisor stopping %d running worker(s): SIGTERM (checkpoint, release, exit)",
                 len(self._running()))
        self._signal_all(signal.SIGTERM)
        clean = True
        while running := self._running():
            if self.signals > max(1, handled):
                log.warning("second stop signal: killing %d worker(s) now", len(running))
                self._signal_all(signal.SIGKILL)
                for child in running:
                    child.proc.wait()  # type: ignore[union-attr]
                    self._reap(child)
                return 1
            for child in running:
                code = self._reap(child)
                if code is not None and code != 0:
                    clean = False
            time.sleep(POLL_SECONDS)
        log.info("supervisor stopped: every worker exited")
        self._http.close()
        if exit_code:
            return exit_code
        return 0 if clean else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The supervisor's command line: its own options plus the workers' (passed on as given)."""
    parser = argparse.ArgumentParser(prog="python -m worker.supervisor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("worker_id", help="base name; the workers are WORKER_ID-1 ... WORKER_ID-N")
    parser.add_argument("--processes", metavar="N|auto",
                        help="worker processes (default WORKER_PROCESSES; auto = usable CPU cores)")
    parser.add_argument("--restart-delay", type=float, default=1.0, metavar="S",
                        help="first delay before restarting a child that keeps dying (default 1)")
    parser.add_argument("--restart-delay-max", type=float, default=30.0, metavar="S",
                        help="cap of the doubling restart delay (default 30)")
    parser.add_argument("--stable-after", type=float, default=10.0, metavar="S",
                        help="a child that lived this long restarts at once (default 10)")
    worker = parser.add_argument_group("worker options (passed to every worker)")
    worker.add_argument("--url")
    worker.add_argument("--max-tasks", metavar="N")
    worker.add_argument("--burst", action="store_true")
    worker.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    return parser.parse_args(argv)


def worker_args(args: argparse.Namespace) -> list[str]:
    """The worker command-line options to pass to every child."""
    out: list[str] = []
    if args.url is not None:
        out += ["--url", args.url]
    if args.max_tasks is not None:
        out += ["--max-tasks", args.max_tasks]
    if args.burst:
        out.append("--burst")
    if args.log_level:
        out += ["--log-level", args.log_level]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the supervisor in the foreground; return its exit code."""
    args = parse_args(argv)
    try:
        config = load_config().with_overrides(log_level=args.log_level)
        count = (config.worker_process_count if args.processes is None
                 else resolve_process_count(args.processes, "--processes"))
        if not 0 <= args.restart_delay <= args.restart_delay_max or args.stable_after < 0:
            raise ConfigError("--restart-delay must be 0..--restart-delay-max and "
                              "--stable-after >= 0")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    configure_logging(config.log_level, log_format=config.log_format)
    try:
        urls = config.dispatcher_urls if args.url is None else check_dispatcher_urls(args.url)
    except ConfigError:
        urls = ()  # the workers report a bad --url themselves (and the supervisor stops)
    supervisor = Supervisor(args.worker_id, count, worker_args(args), config.run_path,
                            dispatcher_urls=urls, token=config.dispatcher_token,
                            restart_delay=args.restart_delay,
                            restart_delay_max=args.restart_delay_max,
                            stable_after=args.stable_after)
    supervisor.install_signal_handlers()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
