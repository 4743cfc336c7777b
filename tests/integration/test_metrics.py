"""GET /metrics over the Flask test client, on both stores: counts agree with /stats."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.app import create_app
from dispatcher.service import Dispatcher
from shared.config import Config
from tests.conftest import FakeClock, run_monitor


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def claim(client: FlaskClient, worker: str, instance: str = "i1", **extra: Any) -> Any:
    return client.post("/get-task", json={"worker_id": worker, "instance_id": instance,
                                          **extra})


def test_metrics_agree_with_stats(client: FlaskClient, dispatcher: Dispatcher,
                                  clock: FakeClock) -> None:
    ids = client.post("/submit-task", json={"tasks": [
        {"task_type": "noop", "params": {"i": i}} for i in range(6)]}).json["task_ids"]
    client.post("/submit-task", json={"task_type": "sleep", "params": {"seconds": 1}})
    tasks = claim(client, "w1", max_tasks=3).json["tasks"]
    clock.advance(2.5)  # the attempt ran 2.5 s by the store's clock
    results = [{"task_id": t["task_id"], "attempt": 1, "result": {}} for t in tasks[:2]]
    results.append({"task_id": tasks[2]["task_id"], "attempt": 1, "error": "Boom: x",
                    "retry": False})
    assert client.post("/submit-result", json={"worker_id": "w1", "results": results}
                       ).status_code == 200
    held = claim(client, "w2").json["task"]
    beat = {"worker_id": "w3", "instance_id": "i1"}  # w3 lives; w2 dies, its task goes back
    client.post("/heartbeat", json=beat)
    run_monitor(dispatcher, clock, 3.0, beat=lambda: client.post("/heartbeat", json=beat))
    again = claim(client, "w3").json["task"]
    assert again["task_id"] == held["task_id"] and again["attempt"] == 2
    client.get("/task/999999")

    stats = client.get("/stats").json
    m = scrape(client)
    for status, count in stats["tasks"].items():
        if status != "total":
            assert value(m, "taskqueue_tasks", status=status) == count
    assert value(m, "taskqueue_queue_depth") == stats["tasks"]["pending"] == 3
    for cause, count in stats["reclaims"].items():
        assert value(m, "taskqueue_reclaims_total", cause=cause) == count
    assert value(m, "taskqueue_reclaims_total", cause="dead_worker") == 1
    assert value(m, "taskqueue_workers", state="alive") == stats["workers"]["alive"]
    assert value(m, "taskqueue_workers", state="dead") == stats["workers"]["dead"] == 2  # w1, w2
    ages = {w["worker_id"]: w["seconds_since_heartbeat"] for w in stats["workers"]["details"]
            if w["status"] == "alive"}
    for worker_id, age in ages.items():
        assert abs(value(m, "taskqueue_worker_heartbeat_age_seconds", worker_id=worker_id)
                   - age) < 0.01
    assert ("taskqueue_worker_heartbeat_age_seconds", (("worker_id", "w2"),)) not in m
    assert value(m, "taskqueue_tasks_submitted_total", task_type="noop") == len(ids)
    assert value(m, "taskqueue_tasks_claimed_total", task_type="noop") == 5
    assert value(m, "taskqueue_tasks_completed_total", task_type="noop") == \
        stats["tasks"]["completed"] == 2
    assert value(m, "taskqueue_tasks_failed_total", task_type="noop", reason="error") == 1
    assert value(m, "taskqueue_task_duration_seconds_count", task_type="noop") == 3
    assert value(m, "taskqueue_task_duration_seconds_sum", task_type="noop") >= 3 * 2.5
    assert value(m, "taskqueue_reassignment_seconds_count", cause="dead_worker") == 1
    assert value(m, "taskqueue_http_requests_total", route="/task/<task_id>", method="GET",
                 status="404") == 1
    assert value(m, "taskqueue_http_request_duration_seconds_count", route="/get-task",
                 method="POST") == 3
    assert value(m, "taskqueue_database_up") == 1


def test_lifecycle_failures_agree_with_stats(client: FlaskClient, dispatcher: Dispatcher,
                                             clock: FakeClock) -> None:
    """An error retried, a timed-out attempt and a manual retry: /metrics' failure counters
    are /stats' ``failures``; a retried error is not a failed task, and its reassignment is
    timed from the end of its backoff."""
    retried = client.post("/submit-task", json={"task_type": "noop", "max_retries": 2,
                                                "retry_backoff": 1}).json["task_id"]
    timed = client.post("/submit-task", json={"task_type": "noop", "priority": -1,
                                              "timeout_seconds": 1}).json["task_id"]
    first = claim(client, "w1").json["task"]
    assert first["task_id"] == retried
    answer = client.post("/submit-result", json={"worker_id": "w1", "task_id": retried,
                                                 "attempt": 1, "error": "flaky"}).json
    assert answer["status"] == "pending" and not answer["duplicate"]
    assert claim(client, "w2").json["task"]["task_id"] == timed
    beat = {"worker_id": "w2", "instance_id": "i1", "tasks": []}
    run_monitor(dispatcher, clock, 2.0, beat=lambda: client.post("/heartbeat", json=beat))
    assert client.get(f"/task/{timed}").json["status"] == "failed"
    assert client.post(f"/task/{timed}/retry", json={}).json["status"] == "pending"
    again = claim(client, "w3").json["task"]
    assert again["task_id"] in (retried, timed)

    failures = client.get("/stats").json["failures"]
    assert failures == {"retries": 1, "manual_retries": 1, "crash_loops": 0, "timed_out": 1}
    m = scrape(client)
    for kind, count in failures.items():
        assert value(m, "taskqueue_task_failures_total", kind=kind) == count
    assert ("taskqueue_reclaims_total", (("cause", "timed_out"),)) not in m
    assert ("taskqueue_tasks_failed_total", (("reason", "error"), ("task_type", "noop"))) \
        not in m  # the error was retried: no task failed of it
    assert value(m, "taskqueue_tasks_failed_total", task_type="noop", reason="timed_out") == 1
    cause = "retry" if again["task_id"] == retried else "manual_retry"
    assert value(m, "taskqueue_reassignment_seconds_count", cause=cause) == 1


def test_oldest_pending_age_follows_the_store_clock(client: FlaskClient,
                                                   clock: FakeClock) -> None:
    assert value(scrape(client), "taskqueue_oldest_pending_age_seconds") == 0
    client.post("/submit-task", json={"task_type": "noop", "params": {}, "priority": 5})
    clock.advance(10)
    client.post("/submit-task", json={"task_type": "noop", "params": {}, "priority": 9})
    clock.advance(5)
    assert value(scrape(client), "taskqueue_oldest_pending_age_seconds") == 15
    claim(client, "w1", max_tasks=1)  # takes the priority-9 task; the oldest stays
    assert value(scrape(client), "taskqueue_oldest_pending_age_seconds") == 15


def test_two_apps_in_one_process_keep_their_own_registries(
        client: FlaskClient, config: Config, clock: FakeClock) -> None:
    other: Flask = create_app(config, clock=clock, start_monitor=False)
    try:
        client.post("/submit-task", json={"task_type": "noop", "params": {}})
        theirs = scrape(other.test_client())
        assert ("taskqueue_tasks_submitted_total", (("task_type", "noop"),)) not in theirs
        assert value(theirs, "taskqueue_tasks", status="pending") == 1  # the shared database
    finally:
        other.extensions["taskqueue"].close()


def test_locked_database_still_renders_process_metrics(tmp_path: Path, clock: FakeClock
                                                        ) -> None:
    path = tmp_path / "db.sqlite"
    config = Config(database_url=f"sqlite:///{path}", sqlite_busy_timeout_ms=100)
    application = create_app(config, clock=clock, start_monitor=False)
    client = application.test_client()
    client.post("/submit-task", json={"task_type": "noop", "params": {}})
    application.extensions["taskqueue"].store.close()  # its connections are gone
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # readers locked out too
    holder.execute("BEGIN EXCLUSIVE")
    try:
        m = scrape(client)
        assert value(m, "taskqueue_database_up") == 0
        assert value(m, "taskqueue_storage_errors_total", where="scrape") == 1
        assert value(m, "taskqueue_tasks_submitted_total", task_type="noop") == 1
        assert ("taskqueue_tasks", (("status", "pending"),)) not in m
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        application.extensions["taskqueue"].close()
