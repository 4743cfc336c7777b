"""Worker logic: backoff, checkpoint throttling, stop flags, and the loop against a stub dispatcher."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import worker.tasks as worker_tasks
from shared.config import REPO_ROOT, Config
from tasks.base import TaskInterrupted, TaskType
from worker.cache_manager import ResultCache
from worker.config import WorkerConfig, make_worker_config
from worker.tasks import Checkpointer, ClaimedTask, InterruptReason, SendOutcome
from worker.client import Backoff
from worker.heartbeat import HeldTasks
from worker.worker import Shutdown, Worker, install_signal_handlers

WAIT_SECONDS = 10.0


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"condition not met within {timeout}s")


# --- pure logic -------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_jitter_stays_between_half_and_full_delay() -> None:
    low = Backoff(base=0.1, cap=1.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_reset_and_retry_after_floor_is_capped() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)
    assert backoff.next_delay(at_least=0.7) == pytest.approx(0.7)
    assert backoff.next_delay(at_least=30.0) == pytest.approx(1.0)


def test_backoff_survives_very_long_outages() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    assert all(0 < backoff.next_delay() <= 5.0 for _ in range(10_000))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_checkpointer(clock: FakeClock, outcome: SendOutcome = SendOutcome.SENT,
                      stop: Callable[[], bool] = lambda: False,
                      revoked: Callable[[], bool] = lambda: False):
    sent: list[tuple[dict, float]] = []

    def send(state: dict, progress: float) -> SendOutcome:
        sent.append((state, progress))
        return outcome

    return Checkpointer(send, 2.0, stop, revoked, clock=clock), sent


def test_checkpoint_is_sent_at_most_once_per_interval() -> None:
    clock = FakeClock()
    checkpoint, sent = make_checkpointer(clock)
    for step in range(1000):  # many cheap calls within the first interval
        checkpoint({"i": step}, step / 1000)
    assert sent == []
    assert checkpoint.latest_state == {"i": 999}
    clock.now += 2.0
    checkpoint({"i": 1000}, 0.5)
    clock.now += 1.9
    checkpoint({"i": 1001}, 0.6)
    clock.now += 0.1
    checkpoint({"i": 1002}, 0.7)
    assert sent == [({"i": 1000}, 0.5), ({"i": 1002}, 0.7)]
    assert (checkpoint.latest_state, checkpoint.latest_progress) == ({"i": 1002}, 0.7)


def test_checkpoint_send_failure_lets_the_task_continue() -> None:
    clock = FakeClock()
    checkpoint, sent = make_checkpointer(clock, outcome=SendOutcome.FAILED)
    clock.now += 5
    checkpoint({"i": 1}, 0.1)
    assert len(sent) == 1 and checkpoint.reason is None


def test_checkpoint_409_interrupts_as_stale() -> None:
    clock = FakeClock()
    checkpoint, _ = make_checkpointer(clock, outcome=SendOutcome.STALE)
    clock.now += 5
    with pytest.raises(TaskInterrupted):
        checkpoint({"i": 1}, 0.1)
    assert checkpoint.reason is InterruptReason.STALE


def test_checkpoint_interrupts_on_shutdown_keeping_the_latest_state() -> None:
    flags = {"stop": False}
    checkpoint, sent = make_checkpointer(FakeClock(), stop=lambda: flags["stop"])
    checkpoint({"i": 1}, 0.1)
    flags["stop"] = True
    with pytest.raises(TaskInterrupted):
        checkpoint({"i": 2}, 0.2)
    assert checkpoint.reason is InterruptReason.SHUTDOWN
    assert (checkpoint.latest_state, checkpoint.latest_progress) == ({"i": 2}, 0.2)
    assert sent == []


def test_checkpoint_interrupts_when_revoked() -> None:
    checkpoint, _ = make_checkpointer(FakeClock(), revoked=lambda: True)
    with pytest.raises(TaskInterrupted):
        checkpoint({}, 0.0)
    assert checkpoint.reason is InterruptReason.REVOKED


def test_first_stop_request_is_warm_second_is_cold() -> None:
    shutdown = Shutdown()
    assert not shutdown.requested
    assert shutdown.request() is False
    assert shutdown.requested
    assert shutdown.request() is True


def test_shutdown_wait_returns_early_once_requested() -> None:
    naps: list[float] = []
    shutdown = Shutdown(sleep=lambda s: (naps.append(s), len(naps) == 3 and shutdown.request()))
    shutdown.wait(3600)
    assert len(naps) == 3 and all(nap <= Shutdown.SLICE_SECONDS for nap in naps)


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_first_signal_only_sets_the_flag(restore_signal_handlers: None) -> None:
    shutdown = Shutdown()
    install_signal_handlers(shutdown)
    os.kill(os.getpid(), signal.SIGTERM)
    wait_until(lambda: shutdown.requested)
    assert shutdown.count == 1


def test_second_signal_exits_at_once() -> None:
    script = (
        "import os, signal, time\n"
        "from worker.worker import Shutdown, install_signal_handlers\n"
        "install_signal_handlers(Shutdown())\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, timeout=30,
                          capture_output=True)
    assert proc.returncode == 1


def test_held_tasks_revocation_is_reported_once_and_hidden_from_heartbeats() -> None:
    held = HeldTasks()
    event = held.add(7, 3)
    held.add(8, 1)
    assert held.snapshot() == [{"task_id": 7, "attempt": 3}, {"task_id": 8, "attempt": 1}]
    assert held.revoke([7, 99, "x"]) == [7]
    assert held.revoke([7]) == []
    assert event.is_set() and held.snapshot() == [{"task_id": 8, "attempt": 1}]


def test_claimed_task_parses_the_checkpoint() -> None:
    task = ClaimedTask.from_dict({"task_id": 4, "attempt": 2, "task_type": "primes",
                                  "params": {"limit": 10}, "lease_expires_at": 1.0,
                                  "checkpoint": {"state": {"n": 5}, "progress": 0.5}})
    assert (task.resume_state, task.resume_progress) == ({"n": 5}, 0.5)
    assert ClaimedTask.from_dict({"task_id": 4, "attempt": 1, "task_type": "primes",
                                  "params": {}, "checkpoint": None}).resume_state is None
    with pytest.raises(ValueError):
        ClaimedTask.from_dict({"task_id": "4", "attempt": 1})


def test_worker_config_derives_paths_and_checks_the_id(tmp_path: Path) -> None:
    config = Config(run_dir=str(tmp_path), heartbeat_interval=0.5)
    wc = make_worker_config(config, "worker-1", url="http://10.0.0.1:6000/")
    assert wc.cache_path == tmp_path / "cache" / "worker-1.sqlite3"
    assert wc.dispatcher_url == "http://10.0.0.1:6000"
    assert wc.heartbeat_timeout == (0.5, 0.5) and len(wc.instance_id) == 32
    with pytest.raises(ValueError, match="WORKER_ID"):
        make_worker_config(config, "../etc")


# --- the loop against a stub dispatcher -------------------------------------------------

Route = Callable[[dict[str, Any]], tuple[int, Any]]


class StubDispatcher:
    """A scripted dispatcher: records every request, answers from per-path routes."""

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.tasks: list[dict[str, Any]] = []
        self.routes: dict[str, Route] = {
            "/heartbeat": lambda body: (200, {"status": "ok", "revoked": []}),
            "/get-task": self._get_task,
            "/submit-result": lambda body: (200, {"task_id": body["task_id"],
                                                  "status": "completed", "duplicate": False}),
            "/checkpoint": lambda body: (200, {"lease_expires_at": 0.0}),
            "/release-task": lambda body: (200, {"task_id": body["task_id"], "status": "pending"}),
        }

    def _get_task(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            return (200, {"task": self.tasks.pop(0)}) if self.tasks else (204, None)

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((path, body))
        return self.routes[path](body)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, body in self.requests if p == path]

    def paths(self, exclude: str = "/heartbeat") -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests if p != exclude]


def _handler_for(stub: StubDispatcher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body = stub.handle(self.path, json.loads(raw))
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[StubDispatcher]:
    dispatcher = StubDispatcher()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(dispatcher))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    dispatcher.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield dispatcher
    server.shutdown()
    server.server_close()
    thread.join()


class EchoParams(BaseModel):
    value: int = 1


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[..., dict[str, Any]]]:
    """Task runs by name, served to the worker in place of the real registry."""
    runs: dict[str, Callable[..., dict[str, Any]]] = {}

    def get_task_type(name: str) -> TaskType:
        if name not in runs:
            raise KeyError(f"unknown task type {name!r}")
        return TaskType(name=name, params_model=EchoParams, run=runs[name], description="test")

    monkeypatch.setattr(worker_tasks, "get_task_type", get_task_type)
    return runs


def task_dict(task_id: int = 1, task_type: str = "echo", attempt: int = 1, **extra: Any) -> dict:
    return {"task_id": task_id, "task_type": task_type, "params": {"value": 21},
            "attempt": attempt, "lease_expires_at": 0.0, "lease_seconds": 100.0,
            "checkpoint": None, **extra}


@pytest.fixture
def make_worker(stub: StubDispatcher, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    caches: list[ResultCache] = []

    def make(url: str | None = None, shutdown: Shutdown | None = None, **changes: Any) -> Worker:
        config = WorkerConfig(worker_id="w1", instance_id="inst-1",
                              dispatcher_url=url or stub.url,
                              cache_path=tmp_path / "w1.sqlite3", heartbeat_interval=0.02,
                              checkpoint_interval=0.0, poll_wait=0.0, backoff_base=0.005,
                              backoff_max=0.02, request_timeout=2.0, burst=True)
        config = dataclasses.replace(config, **changes)
        caches.append(ResultCache(config.cache_path))
        return Worker(config, caches[-1], shutdown or Shutdown())

    yield make
    for cache in caches:
        cache.close()


def test_burst_worker_runs_a_task_and_delivers_its_result(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"double": params.value * 2}
    stub.tasks.append(task_dict())
    assert make_worker().run() == 0
    assert stub.bodies("/submit-result") == [
        {"worker_id": "w1", "task_id": 1, "attempt": 1, "result": {"double": 42}}]
    assert stub.bodies("/get-task")[0] == {"worker_id": "w1", "instance_id": "inst-1", "wait": 0.0}
    assert stub.bodies("/heartbeat")[-1] == {"worker_id": "w1", "instance_id": "inst-1",
                                             "tasks": [], "stopping": True}


def test_failures_are_reported_as_errors(stub, registry, make_worker) -> None:
    def boom(params, resume, checkpoint):
        raise ZeroDivisionError("no luck")

    def huge(params, resume, checkpoint):
        raise RuntimeError("x" * 50_000)

    registry.update(boom=boom, huge=huge, bad_result=lambda *args: {"n": float("nan")})
    stub.tasks += [task_dict(1, "boom"), task_dict(2, "nope"), task_dict(3, "boom", params=[1]),
                   task_dict(4, "huge"), task_dict(5, "bad_result")]
    assert make_worker().run() == 0
    errors = {b["task_id"]: b["error"] for b in stub.bodies("/submit-result")}
    assert errors[1] == "ZeroDivisionError: no luck"
    assert errors[2].startswith("KeyError:")
    assert errors[3].startswith("InvalidParams: params")
    assert errors[4].startswith("RuntimeError: xxx") and len(errors[4]) <= 10_000
    assert errors[5].startswith("TypeError: task returned a non-JSON result")


def test_resume_state_is_passed_to_the_task(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"resumed_from": resume}
    stub.tasks.append(task_dict(checkpoint={"state": {"n": 9}, "progress": 0.3, "attempt": 1}))
    make_worker().run()
    assert stub.bodies("/submit-result")[0]["result"] == {"resumed_from": {"n": 9}}


def test_results_stay_cached_and_are_retried_before_new_claims(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"ok": True}
    answers = iter([(503, None), (502, None), (503, None)])
    stub.routes["/submit-result"] = lambda body: next(answers, (200, {"status": "completed"}))
    stub.tasks.append(task_dict())
    worker = make_worker()
    assert worker.run() == 0
    assert stub.paths() == ["/get-task"] + ["/submit-result"] * 4 + ["/get-task"]
    with ResultCache(worker.config.cache_path) as cache:
        assert cache.pending() == []


def test_cached_results_are_resent_first_on_start(stub, registry, make_worker) -> None:
    worker = make_worker()
    with ResultCache(worker.config.cache_path) as earlier:
        earlier.put(5, 2, {"result": {"from": "before the crash"}})
    assert worker.run() == 0
    assert stub.paths(exclude="")[0] == "/submit-result"
    assert stub.bodies("/submit-result") == [
        {"worker_id": "w1", "task_id": 5, "attempt": 2, "result": {"from": "before the crash"}}]


def test_stale_and_rejected_results_are_dropped(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"ok": True}
    answers = iter([(409, {"error": {"code": "stale_lease"}}), (400, {"error": {}})])
    stub.routes["/submit-result"] = lambda body: next(answers)
    stub.tasks += [task_dict(1), task_dict(2)]
    worker = make_worker()
    assert worker.run() == 0
    assert len(stub.bodies("/submit-result")) == 2
    with ResultCache(worker.config.cache_path) as cache:
        assert cache.pending() == []


def test_checkpoints_are_sent_and_failures_do_not_stop_the_task(stub, registry, make_worker):
    def counting(params, resume, checkpoint):
        for i in range(3):
            checkpoint({"i": i}, i / 3)
        return {"done": True}

    registry["count"] = counting
    stub.routes["/checkpoint"] = lambda body: (503, None)
    stub.tasks.append(task_dict(task_type="count"))
    make_worker().run()
    assert [b["state"] for b in stub.bodies("/checkpoint")] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert stub.bodies("/submit-result")[0]["result"] == {"done": True}


def _checkpoint_until_interrupted(params, resume, checkpoint):
    deadline = time.monotonic() + WAIT_SECONDS
    i = 0
    while time.monotonic() < deadline:
        i += 1
        checkpoint({"i": i}, 0.5)
        time.sleep(0.001)
    return {"not": "interrupted"}


def test_checkpoint_409_abandons_the_task(stub, registry, make_worker) -> None:
    registry["long"] = _checkpoint_until_interrupted
    stub.routes["/checkpoint"] = lambda body: (409, {"error": {"code": "stale_lease"}})
    stub.tasks.append(task_dict(task_type="long"))
    make_worker().run()
    assert stub.bodies("/submit-result") == [] and stub.bodies("/release-task") == []


def test_heartbeat_revocation_abandons_the_running_task(stub, registry, make_worker, caplog):
    registry["long"] = _checkpoint_until_interrupted
    stub.routes["/heartbeat"] = lambda body: (
        (409, {"error": {"code": "stale_lease"}, "revoked": [t["task_id"] for t in body["tasks"]]})
        if body["tasks"] else (200, {"status": "ok", "revoked": []}))
    stub.tasks.append(task_dict(7, "long"))
    with caplog.at_level(logging.WARNING, logger="worker"):
        make_worker(checkpoint_interval=60.0).run()
    assert stub.bodies("/submit-result") == [] and stub.bodies("/release-task") == []
    assert any(b["tasks"] == [{"task_id": 7, "attempt": 1}] for b in stub.bodies("/heartbeat"))
    assert "task 7 revoked from worker w1" in caplog.text


def test_shutdown_releases_the_task_with_its_latest_state(stub, registry, make_worker) -> None:
    shutdown = Shutdown()

    def stops_midway(params, resume, checkpoint):
        checkpoint({"n": 1}, 0.1)
        shutdown.request()  # as the SIGTERM handler would
        checkpoint({"n": 2}, 0.2)
        return {"not": "interrupted"}

    registry["long"] = stops_midway
    stub.tasks += [task_dict(3, "long"), task_dict(4)]
    worker = make_worker(shutdown=shutdown, checkpoint_interval=60.0, burst=False)
    assert worker.run() == 0
    assert stub.bodies("/release-task") == [
        {"worker_id": "w1", "task_id": 3, "attempt": 1, "state": {"n": 2}, "progress": 0.2}]
    assert stub.bodies("/submit-result") == [] and len(stub.bodies("/get-task")) == 1


def test_task_claimed_during_shutdown_is_released_unrun(stub, registry, make_worker) -> None:
    shutdown = Shutdown()
    registry["echo"] = lambda params, resume, checkpoint: pytest.fail("must not run")

    def claim_then_signal(body):
        shutdown.request()
        return (200, {"task": task_dict(9)})

    stub.routes["/get-task"] = claim_then_signal
    assert make_worker(shutdown=shutdown, burst=False).run() == 0
    assert stub.bodies("/release-task") == [{"worker_id": "w1", "task_id": 9, "attempt": 1}]


def test_unreachable_dispatcher_backs_off_and_warns_once(make_worker, caplog) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    worker = make_worker(url=closed_url)
    with caplog.at_level(logging.DEBUG, logger="worker"):
        for _ in range(4):
            worker.loop_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dispatcher unavailable" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_real_registry_tasks_run_through_the_worker(stub, make_worker) -> None:
    stub.tasks += [task_dict(1, "primes", params={"limit": 30}),
                   task_dict(2, "no-such-type", params={})]
    assert make_worker().run() == 0
    outcomes = {b["task_id"]: b for b in stub.bodies("/submit-result")}
    assert outcomes[1]["result"]["prime_count"] == 10
    assert outcomes[2]["error"].startswith("InvalidParams: task_type: unknown task type")
