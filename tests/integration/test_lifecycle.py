"""The task lifecycle over the HTTP API, on both stores, with the store's clock in the test's hands:
retries with backoff, the attempts history, manual retry, delayed tasks, the crash-loop
breaker, timeouts, periodic schedules, and the claim staying on its index."""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from dispatcher.db.store import retry_delay
from dispatcher.service import Dispatcher
from tests.conftest import FakeClock, run_monitor
from tests.support.postgres import generic_plan

NOOP = {"task_type": "noop", "params": {}}


def submit(client: FlaskClient, **fields: Any) -> int:
    resp = client.post("/submit-task", json={**NOOP, **fields})
    assert resp.status_code == 201, resp.json
    return resp.json["task_id"]


_fresh = itertools.count()


def claim(client: FlaskClient, worker: str | None = None, instance: str = "i1"
          ) -> dict[str, Any] | None:
    """Claim as ``worker`` (by default a new one each time: a worker that claims again
    while holding a lease gets that lease back)."""
    worker = worker or f"x{next(_fresh)}"
    resp = client.post("/get-task", json={"worker_id": worker, "instance_id": instance})
    assert resp.status_code in (200, 204), resp.json
    return resp.json["task"] if resp.status_code == 200 else None


def report_error(client: FlaskClient, task: dict[str, Any], error: str, worker: str = "w1",
                 **extra: Any) -> dict[str, Any]:
    body = {"worker_id": worker, "task_id": task["task_id"], "attempt": task["attempt"],
            "error": error, **extra}
    resp = client.post("/submit-result", json=body)
    assert resp.status_code == 200, resp.json
    return resp.json


def view(client: FlaskClient, task_id: int) -> dict[str, Any]:
    return client.get(f"/task/{task_id}").json


def events_of(client: FlaskClient, task_id: int) -> list[dict[str, Any]]:
    """The task's timeline events, oldest first."""
    resp = client.get(f"/events?task_id={task_id}")
    assert resp.status_code == 200, resp.json
    return resp.json["events"]


def test_backoff_doubles_with_jitter_and_stays_capped() -> None:
    assert retry_delay(2.0, 0, 3600, rand=lambda: 0.0) == 1.0
    assert retry_delay(2.0, 0, 3600, rand=lambda: 1.0) == 2.0
    assert retry_delay(2.0, 3, 3600, rand=lambda: 0.0) == 8.0
    assert retry_delay(2.0, 500, 3600, rand=lambda: 1.0) == 3600


def test_an_error_is_retried_after_a_backoff_then_fails_with_its_history(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    task_id = submit(client, max_retries=2, retry_backoff=10)
    for retry in range(2):
        task = claim(client, f"w{retry}")
        assert task is not None and task["attempt"] == retry + 1
        assert report_error(client, task, f"boom {retry}", f"w{retry}")["status"] == "pending"
        failed_at = clock.now
        seen = view(client, task_id)
        assert seen["status"] == "pending" and seen["retries"] == retry + 1
        # Equal jitter: between half and all of backoff * 2**retry after the failure.
        low, high = 10 * 2**retry / 2, 10 * 2**retry
        assert failed_at + low <= seen["run_after"] <= failed_at + high
        assert claim(client, "other") is None  # not claimable before run_after
        clock.now = seen["run_after"] - 0.01
        dispatcher.timer.tick()
        assert claim(client, "other") is None
        clock.now = seen["run_after"]
        assert dispatcher.timer.tick() is None  # nothing else is due
        assert view(client, task_id)["run_after"] is None
    task = claim(client, "w2")
    assert task is not None and task["attempt"] == 3
    assert report_error(client, task, "boom 2", "w2")["status"] == "failed"
    final = view(client, task_id)
    assert final["status"] == "failed" and final["error"] == "boom 2" and final["retries"] == 2
    assert [(a["attempt"], a["worker_id"], a["kind"], a["error"]) for a in final["attempts"]] == [
        (1, "w0", "error", "boom 0"), (2, "w1", "error", "boom 1"), (3, "w2", "error", "boom 2")]
    stats = client.get("/stats").json
    assert stats["failures"]["retries"] == 2
    assert sum(stats["reclaims"].values()) == 0  # retries are not counted as reclaims
    retries = [e for e in events_of(client, task_id) if e["kind"] == "retry"]
    assert [(e["attempt"], e["worker_id"], e["status"]) for e in retries] == [
        (1, "w0", "pending"), (2, "w1", "pending")]
    assert retries[0]["detail"].startswith("raised: boom 0; retry 1 of 2 in ")


def test_the_configured_default_retries_and_a_final_error(
    client: FlaskClient, dispatcher: Dispatcher,
) -> None:
    task_id = submit(client)
    assert view(client, task_id)["max_retries"] == dispatcher.config.default_max_retries == 3
    task = claim(client, "w1")
    # An error the worker marks final (no retry can fix it) fails the task at once.
    assert report_error(client, task, "bad params", retry=False)["status"] == "failed"
    assert view(client, task_id)["retries"] == 0


def test_a_retry_needs_an_attempt_left(client: FlaskClient) -> None:
    task_id = submit(client, max_retries=5, max_attempts=1)
    assert report_error(client, claim(client, "w1"), "boom")["status"] == "failed"
    assert view(client, task_id)["attempt"] == 1


def test_retry_endpoint_puts_failed_and_cancelled_tasks_back(
    client: FlaskClient, dispatcher: Dispatcher,
) -> None:
    failed = submit(client, max_retries=0)
    task = claim(client, "w1")
    report_error(client, task, "boom")
    resp = client.post(f"/task/{failed}/retry", json={})
    assert resp.status_code == 200 and resp.json["status"] == "pending"
    assert resp.json["error"] is None and resp.json["attempts"][0]["error"] == "boom"
    again = claim(client, "w2")
    assert (again["task_id"], again["attempt"]) == (failed, 2)
    # The old attempt's report is stale now; the new attempt's result completes it.
    stale = {"worker_id": "w1", "task_id": failed, "attempt": 1, "error": "boom"}
    assert client.post("/submit-result", json=stale).status_code == 409
    done = {"worker_id": "w2", "task_id": failed, "attempt": 2, "result": {"ok": 1}}
    assert client.post("/submit-result", json=done).json["status"] == "completed"
    for state in ("completed", "pending"):
        target = failed if state == "completed" else submit(client)
        resp = client.post(f"/task/{target}/retry", json={})
        assert resp.status_code == 409 and resp.json["error"]["code"] == "not_retryable"
        assert state in resp.json["error"]["message"]
    cancelled = submit(client)
    client.post(f"/task/{cancelled}/cancel", json={})
    assert client.post(f"/task/{cancelled}/retry", json={}).json["status"] == "pending"
    assert client.post("/task/999999/retry", json={}).status_code == 404
    assert client.get("/stats").json["failures"]["manual_retries"] == 2
    assert [e["kind"] for e in events_of(client, cancelled)] == ["cancelled", "retried"]
    assert [e["status"] for e in events_of(client, failed) if e["kind"] == "retried"] == [
        "pending"]


@pytest.mark.parametrize(("body", "field"), [
    ({"run_at": 2e9, "delay_seconds": 5}, "run_at"),
    ({"delay_seconds": -1}, "delay_seconds"),
    ({"delay_seconds": 10**9}, "delay_seconds"),
    ({"run_at": 1e12}, "run_at"),
    ({"run_at": "soon"}, "run_at"),
    ({"max_retries": -1}, "max_retries"),
    ({"retry_backoff": 1e6}, "retry_backoff"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
])
def test_submission_lifecycle_fields_are_validated(
    client: FlaskClient, body: dict[str, Any], field: str,
) -> None:
    resp = client.post("/submit-task", json={**NOOP, **body})
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_field"
    assert resp.json["error"]["message"].startswith(f"{field}:"), resp.json


@pytest.mark.parametrize(("body", "field"), [
    ({}, "every_seconds"),
    ({"every_seconds": 60, "cron": "* * * * *"}, "every_seconds"),
    ({"every_seconds": 0.5}, "every_seconds"),
    ({"cron": "every minute"}, "cron"),
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * * *", "task_type": "nope"}, "task_type"),
    ({"cron": "* * * * *", "max_retries": 5000}, "max_retries"),
])
def test_schedule_fields_are_validated(
    client: FlaskClient, body: dict[str, Any], field: str,
) -> None:
    resp = client.post("/schedules", json={**NOOP, **body})
    assert resp.status_code == 400
    assert resp.json["error"]["message"].startswith(f"{field}:"), resp.json


def test_the_dashboard_lists_claimable_tasks_and_counts_the_delayed(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    later = submit(client, delay_seconds=30)
    now = submit(client)
    state = client.get("/dashboard/state").json
    assert [t["task_id"] for t in state["pending"]] == [now]
    assert state["headline"]["pending"] == 2 and state["headline"]["delayed"] == 1
    clock.advance(30)
    dispatcher.timer.tick()
    dispatcher.feed.forget()
    state = client.get("/dashboard/state").json
    assert [t["task_id"] for t in state["pending"]] == [later, now]  # by priority, then id
    assert state["headline"]["delayed"] == 0


def test_a_delayed_task_is_claimable_only_once_due(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    later = submit(client, delay_seconds=30)
    at = submit(client, run_at=clock.now + 20)
    past = submit(client, run_at=clock.now - 5)  # due already: claimable at once
    assert view(client, later)["run_after"] == clock.now + 30
    assert view(client, past)["run_after"] is None
    assert claim(client)["task_id"] == past
    assert claim(client) is None
    assert dispatcher.timer.tick() == clock.now + 20  # the next due time, from the store
    clock.advance(20)
    assert dispatcher.timer.tick() == clock.now + 10
    assert claim(client)["task_id"] == at and claim(client) is None
    clock.advance(10)
    assert dispatcher.timer.tick() is None
    assert claim(client)["task_id"] == later
    assert client.get("/stats").json["tasks"]["in-progress"] == 3


def test_crash_loop_breaker_fails_a_task_that_kills_workers_at_one_checkpoint(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    task_id = submit(client, max_attempts=10)
    for n in range(3):
        task = claim(client, f"w{n}", f"i{n}")
        body = {"worker_id": f"w{n}", "task_id": task_id, "attempt": task["attempt"],
                "state": {"at": 1}, "progress": 0.25}
        assert client.post("/checkpoint", json=body).status_code == 200
        run_monitor(dispatcher, clock, 5)  # the worker is silent: dead, its task reclaimed
        if n < 2:
            assert view(client, task_id)["crash_streak"] == n + 1
    final = view(client, task_id)
    assert final["status"] == "failed" and final["attempt"] == 3
    assert final["error"] == "crash loop: killed 3 workers at the same checkpoint"
    assert [(a["kind"], a["error"]) for a in final["attempts"]] == [
        ("crash", "crash: dead_worker")] * 3
    stats = client.get("/stats").json
    assert stats["failures"]["crash_loops"] == 1 and stats["reclaims"]["dead_worker"] == 3
    reclaims = [e for e in events_of(client, task_id) if e["kind"] != "resumed"]
    assert [(e["kind"], e["status"]) for e in reclaims] == [
        ("dead_worker", "pending"), ("dead_worker", "pending"), ("crash_loop", "failed")]
    assert reclaims[-1]["progress"] == 0.25 and reclaims[-1]["worker_id"] == "w2"


def test_a_task_that_progresses_between_crashes_keeps_going(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    task_id = submit(client, max_attempts=5)
    for n in range(5):
        task = claim(client, f"w{n}", f"i{n}")
        body = {"worker_id": f"w{n}", "task_id": task_id, "attempt": task["attempt"],
                "state": {"at": n}, "progress": (n + 1) / 10}
        assert client.post("/checkpoint", json=body).status_code == 200
        run_monitor(dispatcher, clock, 5)
    final = view(client, task_id)
    assert final["status"] == "failed" and final["error"].startswith("gave up after 5 attempts")
    assert final["crash_streak"] == 1 and len(final["attempts"]) == 5


def test_an_attempt_past_its_timeout_fails_and_its_lease_is_gone(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    task_id = submit(client, timeout_seconds=5, max_retries=3)
    task = claim(client, "w1")
    assert task["timeout_seconds"] == 5

    def beat() -> None:
        client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "i1",
                                        "tasks": [{"task_id": task_id, "attempt": 1}]})

    run_monitor(dispatcher, clock, 4, beat=beat)
    assert view(client, task_id)["status"] == "in-progress"
    run_monitor(dispatcher, clock, 2, beat=beat)
    final = view(client, task_id)
    assert final["status"] == "failed" and final["error"] == "timed out after 5 s"
    assert [(a["kind"], a["worker_id"]) for a in final["attempts"]] == [("timeout", "w1")]
    body = {"worker_id": "w1", "task_id": task_id, "attempt": 1, "state": {}, "progress": 0.5}
    assert client.post("/checkpoint", json=body).status_code == 409  # the cooperative stop
    assert client.get("/stats").json["failures"]["timed_out"] == 1
    [event] = events_of(client, task_id)
    assert (event["kind"], event["status"], event["worker_id"]) == ("timed_out", "failed", "w1")


def test_a_schedule_fires_once_per_period(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    resp = client.post("/schedules", json={"task_type": "noop", "params": {"n": 1},
                                           "every_seconds": 10, "max_retries": 1})
    assert resp.status_code == 201
    schedule = resp.json
    assert schedule["next_run_at"] == clock.now + 10 and schedule["runs"] == 0
    assert dispatcher.timer.tick() == clock.now + 10
    assert claim(client) is None
    clock.advance(10)
    dispatcher.timer.tick()
    dispatcher.timer.tick()  # the same period again: nothing more
    task = claim(client)
    assert task["params"] == {"n": 1} and claim(client) is None
    assert view(client, task["task_id"])["max_retries"] == 1
    clock.advance(35)  # three periods missed: one task, then the next period ahead
    dispatcher.timer.tick()
    assert claim(client) is not None and claim(client) is None
    [listed] = client.get("/schedules").json["schedules"]
    assert listed["runs"] == 2 and listed["next_run_at"] == schedule["next_run_at"] + 40
    assert client.delete(f"/schedules/{schedule['schedule_id']}").status_code == 200
    assert client.delete(f"/schedules/{schedule['schedule_id']}").status_code == 404
    clock.advance(100)
    dispatcher.timer.tick()
    assert claim(client) is None


def test_a_cron_schedule_fires_on_its_minutes(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
) -> None:
    clock.now = 1_800_000_030.0  # 30 s past a minute
    resp = client.post("/schedules", json={**NOOP, "cron": "*/5 * * * *"})
    assert resp.status_code == 201
    first = resp.json["next_run_at"]
    assert first % 300 == 0 and clock.now < first <= clock.now + 300


@pytest.mark.parametrize(("query", "indexes"), [
    ("move_claim", ("tasks_ready_idx",)), ("dash_pending", ("tasks_ready_idx",)),
    ("oldest_pending", ("tasks_ready_idx",)),
    ("owner_pending", ("tasks_owner_pending_idx", "tasks_owner_idx")),
])
def test_the_claim_stays_on_its_index(
    dispatcher: Dispatcher, database_url: str, query: str, indexes: tuple[str, ...],
) -> None:
    """The claim, the dashboard's next pending tasks and the oldest-pending gauge walk
    tasks_ready_idx; a client's pending-cap count walks its own pending tasks only."""
    sql = dispatcher.store.DIALECT.queries[query]
    params = {"worker_id": "w", "instance_id": "i", "now": 1.0, "lease_expires_at": 2.0,
              "limit": 10, "owner": "abc", "cap": 10}
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        conn.close()
    else:
        with psycopg.connect(database_url) as conn:
            # Statistics of a queue with many clients and types (rolled back with the rows):
            # on a near-empty table the planner may take any index for a one-row answer.
            conn.execute("""
                INSERT INTO tasks (task_type, params, priority, max_attempts, created_at, owner)
                SELECT 'type' || (i % 5), '{}', 0, 3, 0, 'client' || (i % 50)
                  FROM generate_series(1, 5000) AS i""")
            conn.execute("ANALYZE tasks")
            conn.execute("SET enable_seqscan = off")
            plan = " ".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
            generic = generic_plan(conn, sql, params)  # prepared, it may run on this
            conn.rollback()
        assert any(index in generic for index in indexes), generic
        assert "Seq Scan" not in generic, generic
    assert any(index in plan for index in indexes), plan
    assert "SCAN tasks\n" not in plan + "\n" and "Seq Scan" not in plan


def test_an_idempotency_key_stands_for_the_lifecycle_options_too(client: FlaskClient) -> None:
    """The request hash behind a key covers the whole submission: the same key with another
    delay (or other retries) is a conflict, nothing stored; the same request is a replay."""
    headers = {"Idempotency-Key": "delayed-1"}
    body = {**NOOP, "delay_seconds": 30, "max_retries": 2}
    first = client.post("/submit-task", json=body, headers=headers)
    assert first.status_code == 201
    again = client.post("/submit-task", json=body, headers=headers)
    assert again.status_code == 200 and again.json["task_id"] == first.json["task_id"]
    for changed in ({"delay_seconds": 60}, {"max_retries": 3}, {"delay_seconds": None}):
        other = {k: v for k, v in {**body, **changed}.items() if v is not None}
        resp = client.post("/submit-task", json=other, headers=headers)
        assert resp.status_code == 409 and resp.json["error"]["code"] == "idempotency_conflict"
    assert len(client.get("/tasks").json["tasks"]) == 1
