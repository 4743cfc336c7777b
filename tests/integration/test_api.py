"""The HTTP API over the Flask test client: the contract, fencing, and the sweep."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.service import Dispatcher
from tests.conftest import FakeClock, run_monitor

PRIMES = {"task_type": "primes", "params": {"limit": 1000, "algorithm": "sieve"}}


def submit(client: FlaskClient, body: dict[str, Any] = PRIMES, **headers: str) -> int:
    resp = client.post("/submit-task", json=body, headers=headers)
    assert resp.status_code in (200, 201), resp.json
    return resp.json["task_id"]


def claim(client: FlaskClient, worker: str = "w1", instance: str = "i1", **extra: Any) -> Any:
    resp = client.post("/get-task", json={"worker_id": worker, "instance_id": instance, **extra})
    return resp


def result_body(task: dict[str, Any], worker: str = "w1", value: int = 168) -> dict[str, Any]:
    return {"worker_id": worker, "task_id": task["task_id"], "attempt": task["attempt"],
            "result": {"prime_count": value}}


def test_submit_claim_complete_roundtrip(client: FlaskClient) -> None:
    task_id = submit(client)
    assert client.get(f"/task/{task_id}").json["status"] == "pending"
    task = claim(client).json["task"]
    assert (task["task_id"], task["attempt"], task["checkpoint"]) == (task_id, 1, None)
    assert task["params"] == {"limit": 1000, "algorithm": "sieve"}
    assert client.get(f"/task/{task_id}").json["status"] == "in-progress"
    resp = client.post("/submit-result", json=result_body(task))
    assert resp.status_code == 200 and resp.json["status"] == "completed"
    view = client.get(f"/task/{task_id}").json
    assert view["status"] == "completed" and view["result"] == {"prime_count": 168}
    assert view["worker_id"] == "w1" and view["progress"] == 1.0


def test_empty_queue_answers_204(client: FlaskClient) -> None:
    assert claim(client).status_code == 204


def test_batch_submit_and_batch_claim(client: FlaskClient) -> None:
    body = {"tasks": [{"task_type": "noop", "params": {"i": i}} for i in range(50)]}
    resp = client.post("/submit-task", json=body)
    assert resp.status_code == 201
    ids = resp.json["task_ids"]
    assert len(ids) == 50 and ids == list(range(ids[0], ids[0] + 50))
    tasks = claim(client, max_tasks=32).json["tasks"]
    assert [t["task_id"] for t in tasks] == ids[:32]
    results = [{"task_id": t["task_id"], "attempt": 1, "result": t["params"]} for t in tasks]
    resp = client.post("/submit-result", json={"worker_id": "w1", "results": results})
    assert {r["outcome"] for r in resp.json["results"]} == {"accepted"}
    stats = client.get("/stats").json
    assert stats["tasks"]["completed"] == 32 and stats["tasks"]["pending"] == 18


def test_priority_orders_claims(client: FlaskClient) -> None:
    low = submit(client, {**PRIMES, "priority": -5})
    high = submit(client, {**PRIMES, "priority": 5})
    assert claim(client).json["task"]["task_id"] == high
    assert claim(client, "w2", "i2").json["task"]["task_id"] == low


def test_long_poll_returns_when_a_task_arrives(client: FlaskClient) -> None:
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(r=claim(client, wait=20)))
    waiter.start()
    task_id = submit(client)
    waiter.join(timeout=15)
    assert not waiter.is_alive(), "long poll did not wake up on submission"
    assert answer["r"].status_code == 200 and answer["r"].json["task"]["task_id"] == task_id


def test_task_wait_answers_when_finished(client: FlaskClient) -> None:
    task_id = submit(client)
    task = claim(client).json["task"]
    answer: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: answer.update(r=client.get(f"/task/{task_id}?wait=20")))
    waiter.start()
    client.post("/submit-result", json=result_body(task))
    waiter.join(timeout=15)
    assert not waiter.is_alive()
    assert answer["r"].json["status"] == "completed"


def test_stale_result_is_refused_and_changes_nothing(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    first = claim(client, "w1").json["task"]
    claim(client, "w2", "i2")  # w2 is alive and heartbeats; w1 goes silent
    w2_beats = lambda: client.post("/heartbeat", json={"worker_id": "w2", "instance_id": "i2"})
    assert [r.cause.value for r in run_monitor(dispatcher, clock, 3, w2_beats)] == ["dead_worker"]
    second = claim(client, "w2", "i2").json["task"]
    assert second["task_id"] == task_id and second["attempt"] == 2
    assert client.post("/submit-result", json=result_body(second, "w2", 168)).status_code == 200
    stale = client.post("/submit-result", json=result_body(first, "w1", 999))
    assert stale.status_code == 409 and stale.json["error"]["code"] == "stale_lease"
    view = client.get(f"/task/{task_id}").json
    assert view["result"] == {"prime_count": 168} and view["worker_id"] == "w2"


def test_completion_is_idempotent(client: FlaskClient) -> None:
    submit(client)
    task = claim(client).json["task"]
    assert client.post("/submit-result", json=result_body(task)).json["duplicate"] is False
    again = client.post("/submit-result", json=result_body(task))
    assert again.status_code == 200 and again.json["duplicate"] is True
    different = client.post("/submit-result", json=result_body(task, value=1))
    assert different.status_code == 409
    assert client.get(f"/task/{task['task_id']}").json["result"] == {"prime_count": 168}


def test_checkpoint_renews_lease_and_is_returned_on_reclaim(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    task = claim(client).json["task"]
    beat = lambda: client.post("/heartbeat", json={  # noqa: E731
        "worker_id": "w1", "instance_id": "i1", "tasks": [{"task_id": task_id, "attempt": 1}]})
    assert run_monitor(dispatcher, clock, 90, beat) == []
    resp = client.post("/checkpoint", json={
        "worker_id": "w1", "task_id": task_id, "attempt": 1,
        "state": primes_state(500, 95, 21536), "progress": 0.5})
    assert resp.status_code == 200 and resp.json["lease_expires_at"] == clock() + 100
    assert run_monitor(dispatcher, clock, 90, beat) == []  # lease renewed, worker alive
    [reclaim] = run_monitor(dispatcher, clock, 3)  # the worker goes silent
    assert reclaim.cause.value == "dead_worker"
    again = claim(client, "w2", "i2").json["task"]
    assert again["attempt"] == 2 and again["checkpoint"]["state"]["last_checked"] == 500
    assert again["checkpoint"]["progress"] == 0.5


def primes_state(last: int, count: int, total: int) -> dict[str, Any]:
    return {"last_checked": last, "prime_count": count, "sum_of_primes": total,
            "largest_prime": None, "elapsed_seconds": 0.1, "primes": []}


def test_stale_checkpoint_gets_409(client: FlaskClient) -> None:
    task_id = submit(client)
    claim(client)
    body = {"worker_id": "w1", "task_id": task_id, "attempt": 2,
            "state": primes_state(10, 4, 17)}
    resp = client.post("/checkpoint", json=body)
    assert resp.status_code == 409 and resp.json["error"]["code"] == "stale_lease"


@pytest.mark.parametrize(
    ("state", "progress", "field"),
    [
        (primes_state(600, 100, 17), 0.2, "progress"),  # progress goes back
        (primes_state(600, 50, 17), 0.7, "state.prime_count"),  # count goes back
        (primes_state(400, 110, 9999), 0.7, "state.last_checked"),
        ({"last_checked": "x"}, 0.7, "state.last_checked"),  # malformed
    ],
)
def test_corrupt_checkpoints_are_refused_and_the_good_one_kept(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock,
    state: dict[str, Any], progress: float, field: str,
) -> None:
    task_id = submit(client)
    claim(client)
    base = {"worker_id": "w1", "task_id": task_id, "attempt": 1}
    good = {**base, "state": primes_state(500, 95, 21536), "progress": 0.5}
    assert client.post("/checkpoint", json=good).status_code == 200
    bad = client.post("/checkpoint", json={**base, "state": state, "progress": progress})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_checkpoint"
    assert bad.json["error"]["message"].startswith(field + ":"), bad.json
    run_monitor(dispatcher, clock, 5)
    again = claim(client, "w2", "i2").json["task"]
    assert again["checkpoint"]["state"] == good["state"] and again["checkpoint"]["progress"] == 0.5


def test_lease_expires_without_progress(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    task = claim(client).json["task"]
    beat = lambda: client.post("/heartbeat", json={  # noqa: E731
        "worker_id": "w1", "instance_id": "i1", "tasks": [{"task_id": task_id, "attempt": 1}]})
    # The worker keeps heartbeating but never checkpoints.
    assert run_monitor(dispatcher, clock, 99.5, beat) == []
    reclaimed = run_monitor(dispatcher, clock, 1.0, beat)
    assert [r.cause.value for r in reclaimed] == ["expired_lease"]
    assert client.get(f"/task/{task_id}").json["status"] == "pending"
    hb = client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "i1",
                                         "tasks": [{"task_id": task_id, "attempt": 1}]})
    assert hb.status_code == 409 and hb.json["revoked"] == [task_id]
    assert client.post("/submit-result", json=result_body(task)).status_code == 409
    assert client.get("/stats").json["reclaims"]["expired_lease"] == 1


def test_dead_worker_needs_grace_after_start(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    submit(client)
    claim(client)
    assert run_monitor(dispatcher, clock, 2.0) == []  # within grace and timeout
    assert [r.cause.value for r in run_monitor(dispatcher, clock, 0.5)] == ["dead_worker"]
    workers = client.get("/stats").json["workers"]
    assert workers["dead"] == 1 and workers["details"][0]["status"] == "dead"


def test_an_outage_of_every_dispatcher_restarts_leases_and_grace(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    claimed_at = clock()
    claim(client)
    beat = lambda: client.post("/heartbeat", json={  # noqa: E731
        "worker_id": "w1", "instance_id": "i1", "tasks": [{"task_id": task_id, "attempt": 1}]})
    assert run_monitor(dispatcher, clock, 90, beat) == []
    clock.advance(30)  # nobody sweeps, nobody can heartbeat: every dispatcher is down
    assert run_monitor(dispatcher, clock, 1.5, beat) == []
    assert client.get("/stats").json["monitor"]["in_grace_period"] is True
    assert run_monitor(dispatcher, clock, 60, beat) == []  # the lease restarted at the gap
    view = client.get(f"/task/{task_id}").json
    assert clock() > claimed_at + 100 + 60  # long past the lease the claim gave
    assert view["status"] == "in-progress" and view["lease_expires_at"] > clock()


def test_release_requeues_at_once_with_state(client: FlaskClient) -> None:
    task_id = submit(client)
    claim(client)
    state = primes_state(300, 62, 8275)
    resp = client.post("/release-task", json={"worker_id": "w1", "task_id": task_id,
                                              "attempt": 1, "state": state, "progress": 0.3})
    assert resp.status_code == 200 and resp.json["status"] == "pending"
    assert client.get(f"/task/{task_id}").json["progress"] == 0.3
    again = claim(client, "w2", "i2").json["task"]
    assert again["checkpoint"]["state"] == state and again["attempt"] == 2
    assert client.get("/stats").json["reclaims"]["released_on_shutdown"] == 1


def test_restarted_worker_instance_frees_old_tasks(client: FlaskClient) -> None:
    task_id = submit(client)
    claim(client, "w1", "old")
    client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "new"})
    assert client.get(f"/task/{task_id}").json["status"] == "pending"
    assert client.get("/stats").json["reclaims"]["worker_restarted"] == 1


def test_out_of_attempts_fails_the_task(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client, {**PRIMES, "max_attempts": 2})
    for attempt in (1, 2):
        assert claim(client, f"w{attempt}", f"i{attempt}").json["task"]["attempt"] == attempt
        run_monitor(dispatcher, clock, 5)
    view = client.get(f"/task/{task_id}").json
    assert view["status"] == "failed" and "gave up after 2 attempts" in view["error"]


def test_error_result_marks_failed(client: FlaskClient) -> None:
    submit(client, {**PRIMES, "max_retries": 0})
    task = claim(client).json["task"]
    body = {"worker_id": "w1", "task_id": task["task_id"], "attempt": 1, "error": "boom"}
    assert client.post("/submit-result", json=body).json["status"] == "failed"
    view = client.get(f"/task/{task['task_id']}").json
    assert view["error"] == "boom" and view["retries"] == 0
    assert [(a["attempt"], a["kind"], a["error"]) for a in view["attempts"]] == [
        (1, "error", "boom")]


def test_idempotency_key_returns_same_task(client: FlaskClient) -> None:
    first = client.post("/submit-task", json=PRIMES, headers={"Idempotency-Key": "abc"})
    again = client.post("/submit-task", json=PRIMES, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json["task_id"] == again.json["task_id"] and again.json["duplicate"]
    assert client.get("/stats").json["tasks"]["total"] == 1


def test_cancel(client: FlaskClient) -> None:
    task_id = submit(client)
    cancel = f"/task/{task_id}/cancel"
    assert client.post(cancel, content_type="application/json").json["status"] == "cancelled"
    assert client.post(cancel, content_type="application/json").status_code == 409
    assert claim(client).status_code == 204


def test_stats_document(client: FlaskClient) -> None:
    submit(client)
    claim(client)
    stats = client.get("/stats").json
    assert stats["tasks"]["in-progress"] == 1 and stats["tasks"]["total"] == 1
    [worker] = stats["workers"]["details"]
    assert worker["worker_id"] == "w1" and worker["alive"] and worker["current_tasks"] == [1]
    assert set(stats["reclaims"]) == {"dead_worker", "expired_lease", "released_on_shutdown",
                                      "worker_restarted", "returned_unstarted", "lost_claim"}
    assert stats["throughput"]["window_seconds"] == 60


def test_list_tasks(client: FlaskClient) -> None:
    ids = [submit(client) for _ in range(3)]
    listed = client.get("/tasks?status=pending&limit=2").json["tasks"]
    assert [t["task_id"] for t in listed] == ids[::-1][:2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"params": {"limit": 10}}, "task_type"),
        ({"task_type": "nope", "params": {}}, "task_type"),
        ({"task_type": "primes", "params": {"limit": "100"}}, "params.limit"),
        ({"task_type": "primes", "params": {"limit": -1}}, "params.limit"),
        ({"task_type": "primes", "params": {"limit": 10**15}}, "params.limit"),
        ({"task_type": "primes", "params": {"limit": 10, "algorithm": "magic"}},
         "params.algorithm"),
        ({"task_type": "primes", "params": {"limit": 10, "colour": 1}}, "params.colour"),
        ({"task_type": "primes", "params": [1]}, "params"),
        ({"task_type": "primes", "params": {"limit": 10}, "priority": "high"}, "priority"),
        ({"tasks": [PRIMES, {"task_type": "primes", "params": {"limit": 1.5}}]},
         "tasks[1].params.limit"),
        ({"tasks": []}, "tasks"),
    ],
)
def test_bad_submissions_name_the_field(client: FlaskClient, body: Any, field: str) -> None:
    resp = client.post("/submit-task", json=body)
    assert resp.status_code == 400, resp.json
    assert resp.json["error"]["code"] == "invalid_field"
    assert resp.json["error"]["message"].startswith(field + ":"), resp.json


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/get-task", {}, "worker_id"),
        ("/get-task", {"worker_id": "bad id!"}, "worker_id"),
        ("/get-task", {"worker_id": "w", "wait": -1}, "wait"),
        ("/heartbeat", {"worker_id": "w", "tasks": [{"task_id": "x", "attempt": 1}]},
         "tasks.0.task_id"),
        ("/checkpoint", {"worker_id": "w", "task_id": 1, "attempt": 1, "state": {},
                         "progress": 2}, "progress"),
        ("/submit-result", {"worker_id": "w", "task_id": 1, "attempt": 1}, "body"),
    ],
)
def test_bad_worker_requests_name_the_field(
    client: FlaskClient, path: str, body: Any, field: str
) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == 400
    assert resp.json["error"]["message"].startswith(field + ":"), resp.json


def test_malformed_requests_get_json_errors(client: FlaskClient) -> None:
    not_json = client.post("/submit-task", data="{nope", content_type="application/json")
    assert not_json.status_code == 400 and not_json.json["error"]["code"] == "invalid_json"
    array = client.post("/submit-task", json=[1, 2])
    assert array.status_code == 400
    assert client.get("/task/99999").status_code == 404
    assert client.get("/task/99999").json["error"]["code"] == "not_found"
    assert client.get("/submit-task").status_code == 405
    assert client.get("/nowhere").json["error"]["code"] == "not_found"
    assert client.get("/task/1?wait=abc").status_code == 400
    assert client.get("/tasks?status=weird").status_code == 400


def test_oversized_body_gets_413(client: FlaskClient, app: Any) -> None:
    big = b'{"task_type": "noop", "params": {"x": "' + b"a" * (17 * 1024 * 1024) + b'"}}'
    resp = client.post("/submit-task", data=big, content_type="application/json")
    assert resp.status_code == 413 and "error" in resp.json


def test_locked_database_gets_503_with_retry_after(tmp_path: Any, clock: FakeClock) -> None:
    from dispatcher.app import create_app
    from shared.config import Config

    config = Config(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", sqlite_busy_timeout_ms=100)
    application = create_app(config, clock=clock, start_monitor=False)
    client = application.test_client()
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        resp = client.post("/submit-task", json=PRIMES)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert resp.json["error"]["code"] == "storage_unavailable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert client.post("/submit-task", json=PRIMES).status_code == 201
    application.extensions["taskqueue"].close()


def test_health(client: FlaskClient) -> None:
    assert client.get("/health").json == {"status": "ok"}


def test_claim_carries_the_last_batch_results_in_one_request(client: FlaskClient) -> None:
    ids = client.post("/submit-task", json={"tasks": [{"task_type": "noop", "params": {"i": i}}
                                                      for i in range(4)]}).json["task_ids"]
    first = claim(client, max_tasks=2).json
    assert [t["task_id"] for t in first["tasks"]] == ids[:2] and first["results"] == []
    results = [{"task_id": t["task_id"], "attempt": 1, "result": t["params"]}
               for t in first["tasks"]]
    stale = {"task_id": ids[2], "attempt": 1, "result": {}}  # not claimed yet: stale
    second = claim(client, max_tasks=2, results=results + [stale]).json
    assert [t["task_id"] for t in second["tasks"]] == ids[2:]
    assert [r["outcome"] for r in second["results"]] == ["accepted", "accepted", "stale"]
    assert client.get(f"/task/{ids[0]}").json["result"] == {"i": 0}
    empty = claim(client, max_tasks=0, results=results)
    assert empty.status_code == 200 and empty.json == {"tasks": [], "results": [
        {"task_id": ids[0], "attempt": 1, "outcome": "duplicate"},
        {"task_id": ids[1], "attempt": 1, "outcome": "duplicate"}]}


def test_returned_unstarted_tasks_do_not_use_up_attempts(client: FlaskClient) -> None:
    task_id = submit(client, {**PRIMES, "max_attempts": 1})
    claim(client)
    resp = client.post("/release-task", json={"worker_id": "w1", "task_id": task_id,
                                              "attempt": 1, "reason": "unstarted"})
    assert resp.status_code == 200
    assert client.get("/stats").json["reclaims"]["returned_unstarted"] == 1
    assert claim(client, "w2", "i2").json["task"]["attempt"] == 2


def test_a_claim_whose_answer_was_lost_is_delivered_again(client: FlaskClient) -> None:
    task_id = submit(client)
    claim(client, max_tasks=4)  # committed, but say the answer never reached the worker
    again = claim(client, max_tasks=4).json["tasks"]
    assert [(t["task_id"], t["attempt"]) for t in again] == [(task_id, 1)]
    assert client.get("/stats").json["claims"]["redelivered"] == 1
    other_instance = claim(client, "w1", "i2")  # a restarted worker: requeued, then claimed
    assert other_instance.json["task"]["attempt"] == 2


def test_a_lease_the_worker_never_lists_goes_back_to_the_queue(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    claim(client)
    beat = {"worker_id": "w1", "instance_id": "i1", "tasks": []}
    clock.advance(dispatcher.unlisted_grace - 1)  # an answer may still be in flight
    assert client.post("/heartbeat", json=beat).status_code == 200
    assert client.get(f"/task/{task_id}").json["status"] == "in-progress"
    clock.advance(2)
    assert client.post("/heartbeat", json=beat).status_code == 200
    assert client.get(f"/task/{task_id}").json["status"] == "pending"
    assert client.get("/stats").json["reclaims"]["lost_claim"] == 1
