"""Retention: finished tasks older than RESULT_TTL are purged in batches, nothing else is."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.db.postgres import PostgresStore
from dispatcher.models import NewTask, Report
from dispatcher.service import Dispatcher
from tests.conftest import FakeClock
from tests.support import postgres

TTL = 100.0
NOOP = {"task_type": "noop", "params": {}}


def submit(client: FlaskClient, body: dict[str, Any] = NOOP, **headers: str) -> int:
    resp = client.post("/submit-task", json=body, headers=headers)
    assert resp.status_code == 201, resp.json
    return resp.json["task_id"]


def take(client: FlaskClient, most: int = 1, worker: str = "w1") -> list[dict[str, Any]]:
    resp = client.post("/get-task", json={"worker_id": worker, "instance_id": worker,
                                          "max_tasks": most})
    return resp.json["tasks"]


def report(client: FlaskClient, lease: dict[str, Any], error: str | None = None,
           worker: str = "w1") -> None:
    # An error is final here (no retry after a backoff): the task is failed at once.
    outcome = {"error": error, "retry": False} if error else {"result": {"ok": lease["task_id"]}}
    resp = client.post("/submit-result", json={"worker_id": worker, "task_id": lease["task_id"],
                                               "attempt": lease["attempt"], **outcome})
    assert resp.status_code == 200, resp.json


def all_rows(client: FlaskClient) -> list[dict[str, Any]]:
    """Every task, walked page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/tasks", query_string=query).json
        rows += page["tasks"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def assert_stats_agree_with_rows(client: FlaskClient, dispatcher: Dispatcher) -> None:
    dispatcher.monitor.sweep()  # folds PostgreSQL's count deltas, as every sweep does
    counts = client.get("/stats").json["tasks"]
    rows = all_rows(client)
    for status in ("pending", "in-progress", "completed", "failed", "cancelled"):
        assert counts[status] == sum(1 for r in rows if r["status"] == status), status
    assert counts["total"] == len(rows)


@pytest.fixture
def purging(dispatcher: Dispatcher) -> Dispatcher:
    dispatcher.monitor.result_ttl = TTL
    dispatcher.monitor.purge_batch = 2
    return dispatcher


def test_only_finished_tasks_older_than_the_ttl_are_purged_in_batches(
        client: FlaskClient, purging: Dispatcher, clock: FakeClock) -> None:
    old = [submit(client) for _ in range(5)]
    leases = take(client, 5)
    report(client, leases[0])
    report(client, leases[1])
    report(client, leases[2], error="boom")
    client.post(f"/task/{old[3]}/cancel", json={})  # in progress, cancelled
    still_running = leases[4]
    waiting = submit(client, {**NOOP, "priority": -5})  # pending, submitted long ago
    clock.advance(TTL + 1)
    recent = submit(client)
    report(client, take(client, worker="w2")[0], worker="w2")  # finished just now
    cancelled_recent = submit(client)
    client.post(f"/task/{cancelled_recent}/cancel", json={})
    assert purging.store.purge_finished(TTL, 2) == 2  # one batch is at most its size
    assert purging.monitor.purge() == 2  # then the monitor goes on, batch after batch
    assert purging.monitor.purge() == 0
    left = {row["task_id"]: row["status"] for row in all_rows(client)}
    assert left == {still_running["task_id"]: "in-progress", waiting: "pending",
                    recent: "completed", cancelled_recent: "cancelled"}
    assert client.get(f"/task/{old[0]}").status_code == 404
    with purging.store._read() as tx:  # the failed task's attempt history went with it
        assert tx.all("attempts_of", {"task_id": leases[2]["task_id"]}) == []
    assert_stats_agree_with_rows(client, purging)
    assert client.get("/stats").json["monitor"]["purged"] == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "\ntaskqueue_tasks_purged_total 2.0\n" in metrics  # the monitor's count, as /stats
    report(client, still_running)  # a task that was running all along is untouched
    assert client.get(f"/task/{still_running['task_id']}").json["status"] == "completed"


def test_the_stats_stay_consistent_over_a_large_purge(
        client: FlaskClient, purging: Dispatcher, clock: FakeClock) -> None:
    client.post("/submit-task", json={"tasks": [NOOP] * 40})
    leases = take(client, 30)
    for lease in leases[:25]:
        report(client, lease, error="boom" if lease["task_id"] % 3 == 0 else None)
    clock.advance(TTL + 1)
    purging.monitor.purge_batch = 7
    assert purging.monitor.purge() == 25
    counts = client.get("/stats").json["tasks"]
    assert (counts["pending"], counts["in-progress"], counts["completed"], counts["failed"]) == (
        10, 5, 0, 0)
    assert_stats_agree_with_rows(client, purging)


def test_a_purged_tasks_idempotency_key_can_be_used_again(
        client: FlaskClient, purging: Dispatcher, clock: FakeClock) -> None:
    first = submit(client, **{"Idempotency-Key": "nightly-1"})
    report(client, take(client)[0])
    dup = client.post("/submit-task", json=NOOP, headers={"Idempotency-Key": "nightly-1"})
    assert dup.status_code == 200 and dup.json["task_id"] == first
    clock.advance(TTL + 1)
    assert purging.monitor.purge() == 1
    again = client.post("/submit-task", json=NOOP, headers={"Idempotency-Key": "nightly-1"})
    assert again.status_code == 201 and again.json["task_id"] != first


def test_a_groups_parts_stay_until_the_whole_group_is_old(
        client: FlaskClient, purging: Dispatcher, clock: FakeClock) -> None:
    group = client.post("/submit-task", json={"task_type": "primes", "params": {"limit": 100},
                                              "split": 2}).json
    first, second = take(client, 2)
    report(client, first)
    clock.advance(TTL + 1)
    assert purging.monitor.purge() == 0  # one part is still running: none goes
    report(client, second)
    clock.advance(TTL / 2)
    assert purging.monitor.purge() == 0  # the last part finished too recently
    assert client.get(f"/group/{group['group_id']}").json["parts"]["completed"] == 2
    clock.advance(TTL)
    assert purging.monitor.purge() == 2
    assert client.get(f"/group/{group['group_id']}").status_code == 404
    assert_stats_agree_with_rows(client, purging)


def test_a_retried_task_is_unfinished_again_and_stays(
        client: FlaskClient, purging: Dispatcher, clock: FakeClock) -> None:
    task_id = submit(client)
    report(client, take(client)[0], error="boom")
    clock.advance(TTL + 1)
    retried = client.post(f"/task/{task_id}/retry", json={}).json
    assert retried["status"] == "pending" and retried["finished_at"] is None
    assert purging.monitor.purge() == 0
    assert [a["error"] for a in client.get(f"/task/{task_id}").json["attempts"]] == ["boom"]


def test_a_ttl_of_zero_keeps_everything(client: FlaskClient, dispatcher: Dispatcher,
                                        clock: FakeClock) -> None:
    dispatcher.monitor.result_ttl = 0
    submit(client)
    report(client, take(client)[0])
    clock.advance(10 * 365 * 86400)
    assert dispatcher.monitor.purge() == 0
    assert len(all_rows(client)) == 1


def test_two_dispatchers_purge_one_postgresql_database_without_waiting_on_each_other(
        postgres_database: str, clock: FakeClock) -> None:
    postgres.empty(postgres_database)
    stores = [PostgresStore(postgres_database, clock=clock) for _ in range(2)]
    try:
        ids = [task_id for task_id, _ in stores[0].submit([NewTask("noop", {}, 0, 3)] * 600)]
        while leases := stores[0].claim("w1", "i1", 200, 100).leases:
            stores[0].complete("w1", [Report(lease.task_id, 1, "{}") for lease in leases])
        clock.advance(TTL + 1)
        purged = [0, 0]

        def purge(index: int) -> None:
            while batch := stores[index].purge_finished(TTL, 25):
                purged[index] += batch

        threads = [threading.Thread(target=purge, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sum(purged) == len(ids)  # each task deleted once, by one of them
        stores[0].sweep(2.0, 100.0, 10.0)  # folds the count deltas
        assert {k: v for k, v in stores[1].stats()["counts"].items() if v} == {}
    finally:
        for store in stores:
            store.close()
