"""A Hypothesis stateful model of the queue over the Flask test client and a fake clock.

Random interleavings of submit, claim, heartbeat, checkpoint, complete (fresh or stale), fail,
cancel, time passing with the monitor sweeping, outages of the dispatcher (time passing without
sweeps) and worker restarts; after every step the database must satisfy
the invariants, and every answer must be the one the model predicts (never a 5xx).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from dispatcher.app import create_app
from dispatcher.models import TRANSITIONS, TaskStatus
from shared.config import Config
from tests.conftest import FakeClock, run_monitor

WORKERS = st.sampled_from(["w1", "w2", "w3"])
HEARTBEAT_TIMEOUT = 2.0
LEASE_SECONDS = 10.0


@dataclass(frozen=True)
class Lease:
    """A lease the dispatcher handed out: the fencing token plus who got it."""

    task_id: int
    attempt: int
    worker_id: str
    instance_id: str


def reachable(before: TaskStatus, after: TaskStatus) -> bool:
    """True if ``after`` follows ``before`` in at most two allowed moves (a step may reclaim and
    claim again: in-progress -> pending -> in-progress)."""
    if after == before or after in TRANSITIONS[before]:
        return True
    return any(after in TRANSITIONS[middle] for middle in TRANSITIONS[before])


class QueueModel(RuleBasedStateMachine):
    """The dispatcher as a black box: predict each answer from the database before the call."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="model-"))
        self.db_path = self.tmp / "tasks.db"
        config = Config(database_url=f"sqlite:///{self.db_path}", run_dir=str(self.tmp / "run"),
                        heartbeat_timeout=HEARTBEAT_TIMEOUT, lease_duration=LEASE_SECONDS)
        self.clock = FakeClock()
        self.app = create_app(config, clock=self.clock, start_monitor=False)
        self.client = self.app.test_client()
        self.dispatcher = self.app.extensions["taskqueue"]
        self.db = sqlite3.connect(self.db_path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.instances: dict[str, int] = {}
        self.held: dict[str, set[Lease]] = {}
        self.issued: set[tuple[int, int]] = set()
        self.seen_attempt: dict[int, int] = {}
        self.seen_status: dict[int, TaskStatus] = {}
        self.results: dict[int, tuple[int, str, Any]] = {}

    def teardown(self) -> None:
        self.db.close()
        self.dispatcher.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------

    def instance(self, worker_id: str) -> str:
        return f"{worker_id}-i{self.instances.setdefault(worker_id, 0)}"

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = self.client.post(path, json=body)
        assert resp.status_code < 500, (path, body, resp.status_code, resp.json)
        return resp

    def row(self, task_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()

    def is_current(self, lease: Lease) -> bool:
        row = self.row(lease.task_id)
        return (row["status"] == "in-progress" and row["attempt"] == lease.attempt
                and row["worker_id"] == lease.worker_id)

    # -- rules ----------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        run_monitor(self.dispatcher, self.clock, HEARTBEAT_TIMEOUT + 0.25)  # past the grace

    @rule(max_attempts=st.integers(1, 3), count=st.integers(1, 3))
    def submit(self, max_attempts: int, count: int) -> None:
        task = {"task_type": "noop", "params": {}, "max_attempts": max_attempts}
        resp = self.post("/submit-task", {"tasks": [task] * count})
        assert resp.status_code == 201
        for task_id in resp.json["task_ids"]:
            self.seen_status[task_id] = TaskStatus.PENDING
            self.seen_attempt[task_id] = 0

    @rule(target=leases, worker_id=WORKERS)
    def claim(self, worker_id: str) -> Any:
        resp = self.post("/get-task", {"worker_id": worker_id,
                                       "instance_id": self.instance(worker_id), "wait": 0})
        # A claim first re-delivers what this instance still holds (its answer counts as lost).
        still_held = sorted((lease for lease in self.held.get(worker_id, set())
                             if lease.instance_id == self.instance(worker_id)
                             and self.is_current(lease)), key=lambda lease: lease.task_id)
        if resp.status_code == 204:
            assert not still_held
            return multiple()  # nothing claimed: no lease to add
        assert resp.status_code == 200
        task = resp.json["task"]
        lease = Lease(task["task_id"], task["attempt"], worker_id, self.instance(worker_id))
        if still_held:
            assert lease == still_held[0], "re-delivered lease, same fencing token"
            return lease
        assert (lease.task_id, lease.attempt) not in self.issued, "one fencing token, two leases"
        self.issued.add((lease.task_id, lease.attempt))
        self.held.setdefault(worker_id, set()).add(lease)
        return lease

    @rule(worker_id=WORKERS)
    def heartbeat(self, worker_id: str) -> None:
        mine = [lease for lease in self.held.get(worker_id, set())
                if lease.instance_id == self.instance(worker_id)]
        resp = self.post("/heartbeat", {
            "worker_id": worker_id, "instance_id": self.instance(worker_id),
            "tasks": [{"task_id": lease.task_id, "attempt": lease.attempt} for lease in mine]})
        revoked = sorted(lease.task_id for lease in mine if not self.is_current(lease))
        assert resp.status_code == (409 if revoked else 200)
        assert sorted(resp.json["revoked"]) == revoked

    @rule(lease=leases, step=st.floats(-0.2, 0.4))
    def checkpoint(self, lease: Lease, step: float) -> None:
        current = self.is_current(lease)
        stored = self.db.execute("SELECT progress FROM checkpoints WHERE task_id = ?",
                                 (lease.task_id,)).fetchone()
        previous = stored["progress"] if stored else 0.0
        progress = min(1.0, max(0.0, previous + step))
        resp = self.post("/checkpoint", {"worker_id": lease.worker_id, "task_id": lease.task_id,
                                         "attempt": lease.attempt, "state": {"at": progress},
                                         "progress": progress})
        if not current:
            assert resp.status_code == 409
        elif stored is not None and progress < previous - 1e-9:
            assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_checkpoint"
        else:
            assert resp.status_code == 200, resp.json
            assert resp.json["lease_expires_at"] == self.clock.now + LEASE_SECONDS

    @rule(lease=leases, value=st.integers(0, 2), error=st.booleans())
    def complete(self, lease: Lease, value: int, error: bool) -> None:
        row = self.row(lease.task_id)
        payload: dict[str, Any] = {"error": "boom"} if error else {"result": {"v": value}}
        resp = self.post("/submit-result", {"worker_id": lease.worker_id, "task_id": lease.task_id,
                                            "attempt": lease.attempt, **payload})
        if row["status"] == "in-progress" and row["attempt"] == lease.attempt \
                and row["worker_id"] == lease.worker_id:
            assert resp.status_code == 200 and resp.json["duplicate"] is False
            if not error:
                self.results[lease.task_id] = (lease.attempt, lease.worker_id, payload["result"])
        elif row["status"] == "completed" and not error and self.results.get(lease.task_id) == (
                lease.attempt, lease.worker_id, payload["result"]):
            assert resp.status_code == 200 and resp.json["duplicate"] is True
        elif row["status"] == "failed" and error and row["attempt"] == lease.attempt \
                and row["worker_id"] == lease.worker_id and row["error"] == "boom":
            assert resp.status_code == 200 and resp.json["duplicate"] is True
        else:
            assert resp.status_code == 409, (dict(row), lease, payload, resp.json)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.seen_status:
            return
        task_id = data.draw(st.sampled_from(sorted(self.seen_status)))
        finished = TaskStatus(self.row(task_id)["status"]).finished
        resp = self.client.post(f"/task/{task_id}/cancel", content_type="application/json")
        assert resp.status_code == (409 if finished else 200)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        """Time passes while the dispatcher runs: its monitor sweeps every interval."""
        run_monitor(self.dispatcher, self.clock, seconds)

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0]))
    def outage(self, seconds: float) -> None:
        """Time passes with the dispatcher down: no sweeps (nor anything else)."""
        self.clock.advance(seconds)

    @rule(worker_id=WORKERS)
    def restart_worker(self, worker_id: str) -> None:
        """The worker process dies and a new instance starts under the same id."""
        self.instances[worker_id] = self.instances.get(worker_id, 0) + 1

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def every_task_in_exactly_one_consistent_state(self) -> None:
        for row in self.db.execute("SELECT * FROM tasks"):
            status = TaskStatus(row["status"])
            held = row["lease_expires_at"] is not None
            assert held == (status is TaskStatus.IN_PROGRESS), dict(row)
            if status is TaskStatus.IN_PROGRESS:
                assert row["worker_id"] is not None and row["attempt"] >= 1
            before = self.seen_status.get(row["task_id"], TaskStatus.PENDING)
            assert reachable(before, status), f"task {row['task_id']}: {before} -> {status}"
            assert row["attempt"] >= self.seen_attempt.get(row["task_id"], 0), "attempt went back"
            self.seen_status[row["task_id"]] = status
            self.seen_attempt[row["task_id"]] = row["attempt"]

    @invariant()
    def at_most_one_live_lease_per_task(self) -> None:
        live: dict[int, int] = {}
        for leases in self.held.values():
            for lease in leases:
                if self.is_current(lease):
                    live[lease.task_id] = live.get(lease.task_id, 0) + 1
        assert all(n == 1 for n in live.values()), live

    @invariant()
    def a_completed_task_has_exactly_one_result(self) -> None:
        rows = self.db.execute(
            "SELECT t.task_id, t.status, t.attempt, t.worker_id, COUNT(r.task_id) AS n, "
            "r.attempt AS r_attempt, r.worker_id AS r_worker FROM tasks t "
            "LEFT JOIN task_results r USING (task_id) GROUP BY t.task_id").fetchall()
        for row in rows:
            assert row["n"] == (1 if row["status"] == "completed" else 0), dict(row)
            if row["n"]:
                assert (row["r_attempt"], row["r_worker"]) == (row["attempt"], row["worker_id"])
                expected = self.results.get(row["task_id"])
                assert expected is not None and expected[:2] == (row["r_attempt"], row["r_worker"])


QueueModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_queue_model = QueueModel.TestCase
