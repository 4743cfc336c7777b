"""Split jobs over the HTTP API: parts, progress, the combined result, cancel and failure."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.service import Dispatcher
from tasks.base import noop_checkpoint
from tasks.prime_task import primes
from tests.conftest import FakeClock, run_monitor

COMPARED = ("algorithm", "start", "limit", "prime_count", "sum_of_primes", "largest_prime",
            "primes")


def submit_split(client: FlaskClient, params: dict[str, Any], split: int,
                 **headers: str) -> dict[str, Any]:
    resp = client.post("/submit-task", json={"task_type": "primes", "params": params,
                                             "split": split}, headers=headers)
    assert resp.status_code in (200, 201), resp.json
    return resp.json


def claim_all(client: FlaskClient, worker: str, most: int) -> list[dict[str, Any]]:
    resp = client.post("/get-task", json={"worker_id": worker, "instance_id": worker,
                                          "max_tasks": most})
    return resp.json["tasks"] if resp.status_code == 200 else []


def run_and_report(client: FlaskClient, worker: str, lease: dict[str, Any]) -> None:
    """Do what a worker does with a primes lease: compute it for real, post the result."""
    result = primes(primes.validate(lease["params"]), None, noop_checkpoint)
    resp = client.post("/submit-result", json={"worker_id": worker, "task_id": lease["task_id"],
                                               "attempt": lease["attempt"], "result": result})
    assert resp.status_code == 200, resp.json


def unsplit(params: dict[str, Any]) -> dict[str, Any]:
    return primes(primes.validate(params), None, noop_checkpoint)


@pytest.mark.parametrize(("params", "split"), [
    ({"limit": 0}, 4),  # below 2: no prime at all, one part
    ({"limit": 1}, 5),  # more parts asked than numbers: one part per number
    ({"limit": 2}, 5),
    ({"limit": 100}, 200),
    ({"limit": 1000, "start": 3}, 16),  # a start inside the range, 2 excluded
    ({"limit": 7919, "start": 7919}, 3),  # a one-number range that is prime
    ({"limit": 200_003, "algorithm": "trial_division"}, 7),  # ranges over the list cap
])
def test_split_job_combines_to_the_unsplit_result(
        client: FlaskClient, params: dict[str, Any], split: int) -> None:
    answer = submit_split(client, params, split)
    ids = answer["task_ids"]
    width = params["limit"] - params.get("start", 0) + 1
    assert len(ids) == min(split, width)
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "pending" and view["parts"]["pending"] == len(ids)
    ranges = [(p["params"].get("start", 0), p["params"]["limit"]) for p in view["tasks"]]
    assert ranges[0][0] == params.get("start", 0) and ranges[-1][1] == params["limit"]
    assert all(high + 1 == low for (_, high), (low, _) in zip(ranges, ranges[1:]))
    leases = claim_all(client, "w1", len(ids))
    assert sorted(lease["task_id"] for lease in leases) == ids
    for lease in leases:
        run_and_report(client, "w1", lease)
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "completed" and view["progress"] == 1.0
    assert view["parts"]["completed"] == len(ids) and view["error"] is None
    expected = unsplit(params)
    assert {k: view["result"].get(k) for k in COMPARED} == {k: expected.get(k) for k in COMPARED}


def test_the_combined_result_equals_the_same_job_run_unsplit_through_the_queue(
        client: FlaskClient) -> None:
    params = {"limit": 1_000_000, "algorithm": "sieve"}
    whole = client.post("/submit-task", json={"task_type": "primes", "params": params}).json
    group = submit_split(client, params, 4)
    for lease in claim_all(client, "w1", 5):
        run_and_report(client, "w1", lease)
    task = client.get(f"/task/{whole['task_id']}").json
    combined = client.get(f"/group/{group['group_id']}").json["result"]
    assert combined["prime_count"] == task["result"]["prime_count"] == 78_498
    assert {k: combined.get(k) for k in COMPARED} == {k: task["result"].get(k) for k in COMPARED}


def test_progress_and_status_follow_the_parts(client: FlaskClient) -> None:
    answer = submit_split(client, {"limit": 10_000}, 4)
    first, second = claim_all(client, "w1", 2)
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "running" and view["parts"]["in-progress"] == 2
    run_and_report(client, "w1", first)
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "running" and view["progress"] == 0.25 and view["result"] is None
    assert {p["worker_id"] for p in view["tasks"] if p["status"] != "pending"} == {"w1"}
    assert client.get(f"/task/{first['task_id']}").json["group_id"] == answer["group_id"]


def test_a_failed_part_fails_the_group_with_its_error(
        client: FlaskClient, dispatcher: Dispatcher) -> None:
    answer = client.post("/submit-task", json={
        "task_type": "primes", "params": {"limit": 10_000}, "split": 3, "max_retries": 1,
        "retry_backoff": 0}).json
    leases = claim_all(client, "w1", 3)
    run_and_report(client, "w1", leases[0])
    # A part's error is first retried (each part takes the job's max_retries): the job goes on.
    error = {"worker_id": "w1", "task_id": leases[1]["task_id"], "attempt": 1,
             "error": "ValueError: disk on fire"}
    assert client.post("/submit-result", json=error).json["status"] == "pending"
    assert client.get(f"/group/{answer['group_id']}").json["status"] == "running"
    dispatcher.timer.tick()  # its backoff (0 s) is over
    [again] = claim_all(client, "w2", 1)
    assert again["task_id"] == leases[1]["task_id"]
    # With no retry left, the error fails the part, and so the job.
    client.post("/submit-result", json={**error, "worker_id": "w2", "attempt": again["attempt"]})
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "failed" and view["result"] is None
    assert f"part task {leases[1]['task_id']}" in view["error"]
    assert "disk on fire" in view["error"]
    # The job cannot make a result any more: its unfinished part was cancelled, its worker fenced.
    assert [p["status"] for p in view["tasks"]] == ["completed", "failed", "cancelled"]
    late = client.post("/submit-result", json={
        "worker_id": "w1", "task_id": leases[2]["task_id"], "attempt": 1,
        "result": unsplit(leases[2]["params"])})
    assert late.status_code == 409
    assert client.get(f"/group/{answer['group_id']}").json["status"] == "failed"
    # Retrying the failed part runs it alone: its sibling stays cancelled, no result is made
    # (a split job is run again by submitting it again).
    retried = client.post(f"/task/{leases[1]['task_id']}/retry", json={})
    assert retried.status_code == 200 and retried.json["group_id"] == answer["group_id"]
    view = client.get(f"/group/{answer['group_id']}").json
    assert [p["status"] for p in view["tasks"]] == ["completed", "pending", "cancelled"]
    assert view["status"] == "cancelled" and view["result"] is None


def test_a_part_out_of_attempts_fails_the_group_and_stops_the_others(
        client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock) -> None:
    answer = client.post("/submit-task", json={"task_type": "primes", "params": {"limit": 10_000},
                                              "split": 3, "max_attempts": 1}).json
    [lost] = claim_all(client, "w1", 1)
    [running] = claim_all(client, "w2", 1)
    beat = lambda: client.post("/heartbeat", json={  # noqa: E731
        "worker_id": "w2", "instance_id": "w2",
        "tasks": [{"task_id": running["task_id"], "attempt": 1}]})
    [reclaim] = run_monitor(dispatcher, clock, 3, beat)  # w1 goes silent, out of attempts
    assert (reclaim.task_id, reclaim.failed) == (lost["task_id"], True)
    view = client.get(f"/group/{answer['group_id']}").json
    assert view["status"] == "failed" and "gave up after 1 attempts" in view["error"]
    assert view["parts"] == {"total": 3, "pending": 0, "in-progress": 0, "completed": 0,
                             "failed": 1, "cancelled": 2}
    assert claim_all(client, "w2", 3) == []


def test_cancelling_a_group_cancels_its_unfinished_parts(client: FlaskClient) -> None:
    answer = submit_split(client, {"limit": 10_000}, 4)
    done, running = claim_all(client, "w1", 2)
    run_and_report(client, "w1", done)
    resp = client.post(f"/group/{answer['group_id']}/cancel", json={})
    assert resp.status_code == 200 and resp.json["status"] == "cancelled"
    assert resp.json["parts"] == {"total": 4, "pending": 0, "in-progress": 0, "completed": 1,
                                  "failed": 0, "cancelled": 3}
    late = client.post("/submit-result", json={
        "worker_id": "w1", "task_id": running["task_id"], "attempt": 1,
        "result": unsplit(running["params"])})
    assert late.status_code == 409  # the cancelled part's holder is fenced off
    assert claim_all(client, "w2", 4) == []  # nothing of the group is left to run
    again = client.post(f"/group/{answer['group_id']}/cancel", json={})
    assert again.status_code == 200 and again.json["parts"]["cancelled"] == 3
    assert client.post("/group/999/cancel", json={}).status_code == 404
    assert client.get("/group/999").status_code == 404


def test_a_group_resubmitted_with_its_key_is_the_same_group(client: FlaskClient) -> None:
    first = submit_split(client, {"limit": 1000}, 3, **{"Idempotency-Key": "job-1"})
    again = client.post("/submit-task", json={"task_type": "primes", "params": {"limit": 1000},
                                              "split": 3}, headers={"Idempotency-Key": "job-1"})
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert (again.json["group_id"], again.json["task_ids"]) == (first["group_id"],
                                                                first["task_ids"])
    assert client.get("/stats").json["tasks"]["total"] == 3


@pytest.mark.parametrize(("body", "field"), [
    ({"task_type": "primes", "params": {"limit": 100}, "split": 0}, "split"),
    ({"task_type": "primes", "params": {"limit": 100}, "split": 1001}, "split"),
    ({"task_type": "primes", "params": {"limit": 100}, "split": "4"}, "split"),
    ({"task_type": "noop", "params": {}, "split": 2}, "split"),  # no split/combine defined
    ({"task_type": "primes", "params": {"limit": -1}, "split": 2}, "params.limit"),
    ({"tasks": [{"task_type": "primes", "params": {"limit": 100}, "split": 2}]},
     "tasks[0].split"),
])
def test_bad_split_submissions_name_the_field(client: FlaskClient, body: dict[str, Any],
                                              field: str) -> None:
    resp = client.post("/submit-task", json=body)
    assert resp.status_code == 400, resp.json
    assert resp.json["error"]["message"].startswith(f"{field}:"), resp.json
    assert client.get("/stats").json["tasks"]["total"] == 0


def test_every_part_takes_the_jobs_lifecycle_options(
        client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock) -> None:
    answer = client.post("/submit-task", json={
        "task_type": "primes", "params": {"limit": 10_000}, "split": 2, "max_retries": 2,
        "retry_backoff": 3, "timeout_seconds": 9, "delay_seconds": 30}).json
    views = [client.get(f"/task/{task_id}").json for task_id in answer["task_ids"]]
    assert [(v["group_id"], v["max_retries"], v["retry_backoff"], v["timeout_seconds"],
             v["run_after"]) for v in views] == [
        (answer["group_id"], 2, 3, 9, clock.now + 30)] * 2
    assert claim_all(client, "w1", 2) == []  # the parts wait together
    clock.advance(30)
    dispatcher.timer.tick()
    assert sorted(t["task_id"] for t in claim_all(client, "w1", 2)) == answer["task_ids"]
