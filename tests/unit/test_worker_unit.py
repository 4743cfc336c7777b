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

from shared.config import REPO_ROOT, Config
from tasks.base import TaskInterrupted, TaskType
from tasks.registry import Registry, load_registry
from worker.cache_manager import ResultCache
from worker.config import WorkerConfig, make_worker_config
from worker.tasks import Checkpointer, ClaimedTask, InterruptReason, SendOutcome
from worker.client import Backoff
from worker.heartbeat import HeldTasks
from worker.worker import Prefetch, ResultReporter, Shutdown, Worker, install_signal_handlers

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
    listed = make_worker_config(config, "worker-1", url="http://a:1/, http://b:2")
    assert listed.dispatcher_urls == ("http://a:1", "http://b:2")
    with pytest.raises(ValueError, match=r"--url .*entry 2 \('b:2'\)"):
        make_worker_config(config, "worker-1", url="http://a:1,b:2")


# --- the loop against a stub dispatcher -------------------------------------------------

Route = Callable[[dict[str, Any]], tuple[int, Any]]


@dataclasses.dataclass
class Exchange:
    """One request the stub received, and (once answered) its status and reply body."""

    path: str
    body: dict[str, Any]
    status: int | None = None
    reply: Any = None


class StubDispatcher:
    """A scripted dispatcher speaking the batched protocol; records every exchange.

    ``tasks`` is the queue ``/get-task`` pops up to ``max_tasks`` from; results riding on a
    claim or sent to ``/submit-result`` are answered ``outcomes.get(task_id, "accepted")``.
    A released task goes back to the queue with the next attempt, as the real dispatcher does.
    Tests may replace any entry of ``routes``; :meth:`claim_reply` builds a standard claim answer.
    """

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self.tasks: list[dict[str, Any]] = []
        self.outcomes: dict[int, str] = {}
        self._leased: dict[int, dict[str, Any]] = {}
        self.routes: dict[str, Route] = {
            "/heartbeat": lambda body: (200, {"status": "ok", "revoked": []}),
            "/get-task": self._get_task,
            "/submit-result": lambda body: (200, {"results": self.answer(body["results"])}),
            "/checkpoint": lambda body: (200, {"lease_expires_at": 0.0}),
            "/release-task": self._release,
        }

    def answer(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Batch outcomes for ``results``."""
        with self.lock:
            return [{"task_id": r["task_id"], "attempt": r["attempt"],
                     "outcome": self.outcomes.get(r["task_id"], "accepted")} for r in results]

    def take(self, count: int) -> list[dict[str, Any]]:
        """Pop up to ``count`` tasks off the queue."""
        with self.lock:
            taken, self.tasks[:count] = self.tasks[:count], []
            return taken

    def claim_reply(self, body: dict[str, Any], tasks: list[dict[str, Any]]) -> tuple[int, Any]:
        """The 200 answer to a claim: ``tasks`` leased, outcomes for the results it carried."""
        with self.lock:
            self._leased.update((t["task_id"], t) for t in tasks)
        return 200, {"tasks": tasks, "results": self.answer(body["results"])}

    def _get_task(self, body: dict[str, Any]) -> tuple[int, Any]:
        return self.claim_reply(body, self.take(body["max_tasks"]))

    def _release(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            task = self._leased.pop(body["task_id"], None)
            if task is not None and task["attempt"] == body["attempt"]:
                self.tasks.append({**task, "attempt": task["attempt"] + 1})
        return 200, {"task_id": body["task_id"], "status": "pending"}

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        exchange = Exchange(path, body)
        with self.lock:
            self.exchanges.append(exchange)
        exchange.status, exchange.reply = self.routes[path](body)
        return exchange.status, exchange.reply

    def of(self, path: str) -> list[Exchange]:
        """The exchanges on ``path``, in arrival order."""
        with self.lock:
            return [e for e in self.exchanges if e.path == path]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [e.body for e in self.of(path)]

    def paths(self, exclude: str = "/heartbeat") -> list[str]:
        with self.lock:
            return [e.path for e in self.exchanges if e.path != exclude]

    def delivered(self) -> list[dict[str, Any]]:
        """Every result the stub answered, via a claim or /submit-result, in arrival order.

        As ``{"worker_id", "task_id", "attempt", "result"|"error"}``; results in requests that
        were refused (5xx, 4xx) or left without an outcome are not counted.
        """
        found = []
        for exchange in self.of("/get-task") + self.of("/submit-result"):
            if exchange.status != 200:
                continue
            answered = {o["task_id"] for o in exchange.reply["results"]}
            order = self.exchanges.index(exchange)
            found += [(order, {"worker_id": exchange.body["worker_id"], **r})
                      for r in exchange.body["results"] if r["task_id"] in answered]
        return [result for _, result in sorted(found, key=lambda pair: pair[0])]


def served(exchange: Exchange) -> list[int]:
    """Ids of the tasks a claim exchange handed out."""
    return [t["task_id"] for t in (exchange.reply or {}).get("tasks", [])]


def carried(exchange: Exchange) -> list[int]:
    """Ids of the results a claim or submit-result request carried."""
    return [r["task_id"] for r in exchange.body["results"]]


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
def registry() -> dict[str, Callable[..., dict[str, Any]]]:
    """Task runs by name (params: EchoParams), added to the built-ins of each worker made."""
    return {}


def task_dict(task_id: int = 1, task_type: str = "echo", attempt: int = 1, **extra: Any) -> dict:
    return {"task_id": task_id, "task_type": task_type, "params": {"value": 21},
            "attempt": attempt, "lease_expires_at": 0.0, "lease_seconds": 100.0,
            "checkpoint": None, **extra}


@pytest.fixture
def make_worker(
    stub: StubDispatcher, tmp_path: Path, registry: dict[str, Callable[..., dict[str, Any]]]
) -> Iterator[Callable[..., Worker]]:
    caches: list[ResultCache] = []

    def make(url: str | None = None, shutdown: Shutdown | None = None, **changes: Any) -> Worker:
        config = WorkerConfig(worker_id="w1", instance_id="inst-1",
                              dispatcher_url=url or stub.url,
                              cache_path=tmp_path / "w1.sqlite3", heartbeat_interval=0.02,
                              checkpoint_interval=0.0, poll_wait=0.0, backoff_base=0.005,
                              backoff_max=0.02, request_timeout=2.0, burst=True)
        config = dataclasses.replace(config, **changes)
        caches.append(ResultCache(config.cache_path))
        extra = [TaskType(name, EchoParams, run, "test") for name, run in registry.items()]
        task_types = Registry([*load_registry(), *extra])
        return Worker(config, caches[-1], shutdown or Shutdown(), task_types)

    yield make
    for cache in caches:
        cache.close()


def cached(worker: Worker) -> list[tuple[int, int]]:
    """(task_id, attempt) of the results still in the worker's durable cache."""
    with ResultCache(worker.config.cache_path) as cache:
        return [(p.task_id, p.attempt) for p in cache.pending()]


def test_burst_worker_runs_a_task_and_delivers_its_result(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"double": params.value * 2}
    stub.tasks.append(task_dict())
    worker = make_worker()
    assert worker.run() == 0
    assert stub.delivered() == [
        {"worker_id": "w1", "task_id": 1, "attempt": 1, "result": {"double": 42}}]
    claims = stub.bodies("/get-task")
    assert claims[0] == {"worker_id": "w1", "instance_id": "inst-1", "wait": 0.0,
                         "max_tasks": 1, "results": []}
    # The result rode on the next claim; no separate /submit-result was needed.
    assert claims[1]["results"] == [{"task_id": 1, "attempt": 1, "result": {"double": 42}}]
    assert stub.bodies("/submit-result") == [] and cached(worker) == []
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
    delivered = stub.delivered()
    assert sorted(d["task_id"] for d in delivered) == [1, 2, 3, 4, 5]
    assert all("result" not in d for d in delivered)
    errors = {d["task_id"]: d["error"] for d in delivered}
    assert errors[1] == "ZeroDivisionError: no luck"
    assert errors[2].startswith("UnknownTaskType: task type 'nope' is not loaded on worker w1")
    assert errors[3].startswith("InvalidParams: params")
    assert errors[4].startswith("RuntimeError: xxx") and len(errors[4]) <= 10_000
    assert errors[5].startswith("TypeError: task returned a non-JSON result")


def test_resume_state_is_passed_to_the_task(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"resumed_from": resume}
    stub.tasks.append(task_dict(checkpoint={"state": {"n": 9}, "progress": 0.3, "attempt": 1}))
    make_worker().run()
    [delivered] = stub.delivered()
    assert delivered["result"] == {"resumed_from": {"n": 9}}


def test_results_are_retried_before_new_claims_and_cached_once_a_send_fails(
    stub, registry, make_worker
) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"ok": True}
    failures = iter([(503, None), (502, None), (503, None)])
    in_cache_at_claim: list[list[tuple[int, int]]] = []

    def flaky_claim(body):
        in_cache_at_claim.append(cached(worker))
        if body["results"] and (failure := next(failures, None)):
            return failure
        return stub._get_task(body)

    stub.routes["/get-task"] = flaky_claim
    stub.tasks += [task_dict(1), task_dict(2)]
    worker = make_worker()
    assert worker.run() == 0
    # While the claim carrying task 1's result fails, no new work is handed out or run; the
    # same result is re-sent until answered, and only that answer brings task 2.
    assert [(e.status, carried(e), served(e)) for e in stub.of("/get-task")] == [
        (200, [], [1]), (503, [1], []), (502, [1], []), (503, [1], []), (200, [1], [2]),
        (200, [2], [])]
    assert [(d["task_id"], d["result"]) for d in stub.delivered()] == [(1, {"ok": True}),
                                                                        (2, {"ok": True})]
    # A short task's result goes out from memory; once a send failed it is in the cache until
    # answered. Task 2's was delivered at the first try and never written there.
    assert in_cache_at_claim == [[], [], [(1, 1)], [(1, 1)], [(1, 1)], []]
    assert stub.bodies("/submit-result") == [] and cached(worker) == []


def test_a_long_task_result_is_in_the_cache_before_it_is_sent(
    stub, registry, make_worker
) -> None:
    def long_task(params, resume, checkpoint):
        time.sleep(ResultReporter.SAVE_AFTER_SECONDS * 2)  # the task's own running time
        return {"ok": True}

    registry["echo"] = long_task
    in_cache_at_claim: list[list[tuple[int, int]]] = []

    def claim(body):
        in_cache_at_claim.append(cached(worker))
        return stub._get_task(body)

    stub.routes["/get-task"] = claim
    stub.tasks.append(task_dict(1))
    worker = make_worker()
    assert worker.run() == 0
    assert in_cache_at_claim == [[], [(1, 1)]]
    assert cached(worker) == []  # dropped once answered


def test_cached_results_are_resent_first_on_start(stub, registry, make_worker) -> None:
    worker = make_worker()
    with ResultCache(worker.config.cache_path) as earlier:
        earlier.put(5, 2, {"result": {"from": "before the crash"}})
        earlier.put(6, 1, {"error": "ValueError: also before"})
    assert worker.run() == 0
    assert stub.paths(exclude="")[0] == "/submit-result"  # before the first heartbeat
    assert stub.bodies("/submit-result") == [{"worker_id": "w1", "results": [
        {"task_id": 5, "attempt": 2, "result": {"from": "before the crash"}},
        {"task_id": 6, "attempt": 1, "error": "ValueError: also before"}]}]
    assert stub.delivered() == [
        {"worker_id": "w1", "task_id": 5, "attempt": 2, "result": {"from": "before the crash"}},
        {"worker_id": "w1", "task_id": 6, "attempt": 1, "error": "ValueError: also before"}]
    assert all(body["results"] == [] for body in stub.bodies("/get-task"))
    assert cached(worker) == []


def test_cached_results_ride_on_the_first_claim_when_the_start_flush_fails(
        stub, registry, make_worker) -> None:
    worker = make_worker()
    with ResultCache(worker.config.cache_path) as earlier:
        earlier.put(5, 2, {"result": {"from": "before the crash"}})
    stub.routes["/submit-result"] = lambda body: (503, None)
    assert worker.run() == 0
    assert [e.status for e in stub.of("/submit-result")] == [503]
    assert carried(stub.of("/get-task")[0]) == [5]
    assert stub.delivered() == [
        {"worker_id": "w1", "task_id": 5, "attempt": 2, "result": {"from": "before the crash"}}]
    assert cached(worker) == []


def test_stale_and_rejected_results_are_dropped(stub, registry, make_worker, caplog) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"ok": True}
    worker = make_worker()
    with ResultCache(worker.config.cache_path) as earlier:
        earlier.put(8, 1, {"result": {"refused": "outright"}})
    stub.routes["/submit-result"] = lambda body: (400, {"error": {"code": "bad_request"}})
    stub.outcomes.update({1: "stale", 2: "not_found"})
    stub.tasks += [task_dict(1), task_dict(2)]
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert worker.run() == 0
    # A refused result is replaced once by an error naming the refusal (so the task ends
    # failed instead of being computed again); a refused error is dropped.
    assert stub.bodies("/submit-result") == [
        {"worker_id": "w1", "results": [{"task_id": 8, "attempt": 1,
                                         "result": {"refused": "outright"}}]},
        {"worker_id": "w1", "results": [{"task_id": 8, "attempt": 1, "error":
            "result refused by the dispatcher (HTTP 400 bad_request: None)", "retry": False}]}]
    # Never re-sent on a later claim.
    assert [task_id for e in stub.of("/get-task") for task_id in carried(e)] == [1, 2]
    assert cached(worker) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("task 1 attempt 1" in m and "refused (stale)" in m for m in warnings)
    assert any("task 2 attempt 1" in m and "refused (not_found)" in m for m in warnings)
    assert any(r.levelno == logging.ERROR and "rejected (HTTP 400" in r.getMessage()
               for r in caplog.records)


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
    assert [d["result"] for d in stub.delivered()] == [{"done": True}]


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
    worker = make_worker()
    worker.run()
    assert len(stub.bodies("/checkpoint")) == 1
    assert stub.delivered() == [] and stub.bodies("/release-task") == []
    assert all(body["results"] == [] for body in stub.bodies("/get-task"))
    assert cached(worker) == []


def test_heartbeat_revocation_abandons_the_running_task(stub, registry, make_worker, caplog):
    registry["long"] = _checkpoint_until_interrupted
    stub.routes["/heartbeat"] = lambda body: (
        (409, {"error": {"code": "stale_lease"}, "revoked": [t["task_id"] for t in body["tasks"]]})
        if body["tasks"] else (200, {"status": "ok", "revoked": []}))
    stub.tasks.append(task_dict(7, "long"))
    with caplog.at_level(logging.WARNING, logger="worker"):
        worker = make_worker(checkpoint_interval=60.0)
        worker.run()
    assert stub.delivered() == [] and stub.bodies("/release-task") == []
    assert all(body["results"] == [] for body in stub.bodies("/get-task"))
    assert cached(worker) == []
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
        {"worker_id": "w1", "task_id": 3, "attempt": 1, "reason": "shutdown",
         "state": {"n": 2}, "progress": 0.2}]
    assert stub.delivered() == [] and stub.bodies("/submit-result") == []
    assert len(stub.bodies("/get-task")) == 1 and cached(worker) == []


def test_task_claimed_during_shutdown_is_released_unrun(stub, registry, make_worker) -> None:
    shutdown = Shutdown()
    registry["echo"] = lambda params, resume, checkpoint: pytest.fail("must not run")

    def claim_then_signal(body):
        shutdown.request()
        return stub.claim_reply(body, [task_dict(9)])

    stub.routes["/get-task"] = claim_then_signal
    assert make_worker(shutdown=shutdown, burst=False).run() == 0
    assert stub.bodies("/release-task") == [
        {"worker_id": "w1", "task_id": 9, "attempt": 1, "reason": "shutdown"}]
    assert stub.delivered() == [] and len(stub.bodies("/get-task")) == 1


def test_unreachable_dispatcher_backs_off_and_warns_once(make_worker, caplog) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    worker = make_worker(url=closed_url)
    with ResultCache(worker.config.cache_path) as earlier:
        earlier.put(5, 1, {"result": {"kept": True}})
    with caplog.at_level(logging.DEBUG, logger="worker"):
        for _ in range(4):
            worker.loop_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dispatcher unavailable" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert cached(worker) == [(5, 1)]  # kept for the next claim


def test_real_registry_tasks_run_through_the_worker(stub, make_worker) -> None:
    stub.tasks += [task_dict(1, "primes", params={"limit": 30}),
                   task_dict(2, "no-such-type", params={})]
    assert make_worker().run() == 0
    outcomes = {d["task_id"]: d for d in stub.delivered()}
    assert sorted(outcomes) == [1, 2]
    assert outcomes[1]["result"]["prime_count"] == 10
    assert outcomes[2]["error"].startswith(
        "UnknownTaskType: task type 'no-such-type' is not loaded on worker w1 (add its module")


# --- prefetching ------------------------------------------------------------------------


def test_prefetch_doubles_for_short_tasks_up_to_the_maximum_and_resets_after_a_long_one() -> None:
    prefetch = Prefetch(maximum=8)
    sizes = [prefetch.size]
    for seconds in (0.001, 0.01, Prefetch.SHORT_TASK_SECONDS, 0.0, 0.051, 0.0):
        prefetch.record(seconds)
        sizes.append(prefetch.size)
    assert sizes == [1, 2, 4, 8, 8, 1, 2]
    assert Prefetch(maximum=0).maximum == 1


def test_claims_grow_for_short_tasks_and_shrink_to_one_after_a_long_one(
        stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"value": params.value}

    def slow(params, resume, checkpoint):
        time.sleep(0.1)  # the work itself: longer than a short task, no checkpoints
        return {"slow": True}

    registry["slow"] = slow
    stub.tasks += [task_dict(i) for i in range(1, 13)] + [task_dict(50, "slow")] + [
        task_dict(i) for i in range(13, 25)]
    assert make_worker(prefetch_max=4).run() == 0
    claims = stub.of("/get-task")
    sizes = [c.body["max_tasks"] for c in claims]
    at = next(i for i, c in enumerate(claims) if 50 in served(c))
    assert sizes[0] == 1 and max(sizes[:at + 1]) == 4 and max(sizes) == 4
    assert sizes[at + 1] == 1  # reset after the long task
    # Giving back the rest of the batch also delivered the finished results at once.
    flushed = [r["task_id"] for b in stub.bodies("/submit-result") for r in b["results"]]
    assert 50 in flushed
    assert max(sizes[at + 1:]) > 1  # and grows again on short tasks
    delivered = stub.delivered()
    assert sorted(d["task_id"] for d in delivered) == sorted([*range(1, 25), 50])
    # Tasks fetched after the slow one in its batch were given back unstarted, then re-claimed.
    batch = served(claims[at])
    assert [(b["task_id"], b["reason"]) for b in stub.bodies("/release-task")] == [
        (task_id, "unstarted") for task_id in batch[batch.index(50) + 1:]]


def test_unstarted_tasks_are_given_back_while_a_long_first_task_runs(
        stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"value": params.value}
    seen: dict[str, Any] = {}

    def long_task(params, resume, checkpoint):
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 0.2:  # the work: 0.2 s in small steps
            checkpoint({"elapsed": elapsed}, elapsed / 0.2)
            if "first_release_at" not in seen and stub.bodies("/release-task"):
                seen["first_release_at"] = elapsed
            time.sleep(0.005)
        seen["released_while_running"] = stub.bodies("/release-task")
        return {"long": True}

    registry["long"] = long_task
    batch = [task_dict(10, "long"), task_dict(11), task_dict(12), task_dict(13)]
    fillers = list(range(100, 200))

    def claim(body):
        """Quick fillers until the worker asks for a whole batch, then the batch, then the queue."""
        if batch and body["max_tasks"] < len(batch) and len(fillers) >= body["max_tasks"]:
            tasks = [task_dict(fillers.pop(0)) for _ in range(body["max_tasks"])]
        elif batch:
            tasks, batch[:] = list(batch), []
        else:
            tasks = stub.take(body["max_tasks"])
        return stub.claim_reply(body, tasks)

    stub.routes["/get-task"] = claim
    worker = make_worker(checkpoint_interval=60.0, prefetch_max=4)
    assert worker.run() == 0

    expected = [{"worker_id": "w1", "task_id": t, "attempt": 1, "reason": "unstarted"}
                for t in (11, 12, 13)]
    assert seen["released_while_running"] == expected == stub.bodies("/release-task")
    assert seen["first_release_at"] < 0.15  # soon after the task proved long, not at its end
    delivered = {d["task_id"]: d for d in stub.delivered()}
    assert delivered[10] == {"worker_id": "w1", "task_id": 10, "attempt": 1,
                             "result": {"long": True}}
    # The given-back tasks were claimed again (next attempt) and ran once each.
    assert [(delivered[t]["attempt"], delivered[t]["result"]) for t in (11, 12, 13)] == [
        (2, {"value": 21})] * 3
    assert len(stub.delivered()) == len(delivered)
    claims = stub.of("/get-task")
    assert [c.body["max_tasks"] for c in claims if 10 in served(c)] == [4]
    after = next(i for i, c in enumerate(claims) if 10 in carried(c))
    assert claims[after].body["max_tasks"] == 1
    assert cached(worker) == []


def test_a_refused_claim_delivers_results_apart_and_fails_only_the_bad_one(
    stub, registry, make_worker, caplog
) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"ok": True}
    stub.tasks += [task_dict(1), task_dict(2), task_dict(3)]
    plain_claim = stub.routes["/get-task"]
    stub.routes["/get-task"] = lambda body: (
        (413, {"error": {"code": "payload_too_large"}}) if body["results"] else plain_claim(body))

    def submit(body: dict[str, Any]) -> tuple[int, Any]:
        if len(body["results"]) > 1:
            return 413, {"error": {"code": "payload_too_large"}}
        if body["results"][0]["task_id"] == 2 and "result" in body["results"][0]:
            return 400, {"error": {"code": "invalid_field"}}
        return 200, {"results": stub.answer(body["results"])}

    stub.routes["/submit-result"] = submit
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert make_worker().run() == 0  # a burst run that ends: nothing wedged
    delivered = {r["task_id"]: r for r in stub.delivered()}
    assert sorted(delivered) == [1, 2, 3]
    assert delivered[1]["result"] == delivered[3]["result"] == {"ok": True}
    assert delivered[2]["error"].startswith("result refused by the dispatcher (HTTP 400")
    assert any(r.levelno == logging.ERROR and "task 2 attempt 1" in r.getMessage()
               and "rejected" in r.getMessage() for r in caplog.records)


def test_a_result_over_the_cap_is_reported_as_an_error(stub, registry, make_worker) -> None:
    registry["echo"] = lambda params, resume, checkpoint: {"blob": "x" * 5000}
    stub.tasks.append(task_dict(1))
    assert make_worker(max_result_bytes=4096).run() == 0
    [report] = stub.delivered()
    assert "result" not in report
    assert report["error"] == ("result too large: 5011 bytes is over the limit of 4096 "
                               "(MAX_RESULT_BYTES)")


def test_a_task_past_its_timeout_is_stopped_at_its_next_checkpoint_call() -> None:
    now = [100.0]
    checkpointer = Checkpointer(lambda state, progress: SendOutcome.SENT, 1000.0,
                                should_stop=lambda: False, is_revoked=lambda: False,
                                clock=lambda: now[0], timeout_seconds=5)
    checkpointer({"i": 1}, 0.1)
    now[0] = 105.5
    with pytest.raises(TaskInterrupted):
        checkpointer({"i": 2}, 0.2)
    assert checkpointer.reason is InterruptReason.TIMED_OUT


def test_the_watchdog_ends_the_process_only_past_timeout_and_grace() -> None:
    from worker.worker import EXIT_TASK_OVERRAN, Watchdog

    exits: list[int] = []
    watchdog = Watchdog("w1", grace=2.0, exit_now=exits.append)
    task = ClaimedTask(7, 1, "spin", {}, None, None, timeout_seconds=3.0)
    watchdog.watch(task, started=50.0)
    watchdog.check(54.9)
    assert exits == []
    watchdog.check(55.1)
    assert exits == [EXIT_TASK_OVERRAN]
    watchdog.clear()
    watchdog.check(100.0)  # no task: nothing to stop
    untimed = ClaimedTask(8, 1, "spin", {}, None, None)
    watchdog.watch(untimed, started=0.0)
    watchdog.check(10**6)
    assert exits == [EXIT_TASK_OVERRAN]


def test_a_claimed_task_reads_its_timeout() -> None:
    raw = {"task_id": 1, "attempt": 1, "task_type": "noop", "params": {}}
    assert ClaimedTask.from_dict({**raw, "timeout_seconds": 2.5}).timeout_seconds == 2.5
    assert ClaimedTask.from_dict({**raw, "timeout_seconds": None}).timeout_seconds is None
    assert ClaimedTask.from_dict({**raw, "timeout_seconds": True}).timeout_seconds is None
