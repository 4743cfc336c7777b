"""The dashboard's endpoints over the Flask test client, on both stores: the page, its state
document, the events timeline (written with each reclaim) and a task's checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.service import Dispatcher
from tests.conftest import FakeClock, run_monitor

SLEEP = {"task_type": "sleep", "params": {"seconds": 10}}


def submit(client: FlaskClient, body: dict[str, Any] = SLEEP) -> int:
    resp = client.post("/submit-task", json=body)
    assert resp.status_code == 201, resp.json
    return resp.json["task_id"]


def claim(client: FlaskClient, worker: str, instance: str) -> dict[str, Any]:
    resp = client.post("/get-task", json={"worker_id": worker, "instance_id": instance})
    assert resp.status_code == 200, resp.data
    return resp.json["task"]


def checkpoint(client: FlaskClient, worker: str, task: dict[str, Any], slept: float) -> None:
    resp = client.post("/checkpoint", json={
        "worker_id": worker, "task_id": task["task_id"], "attempt": task["attempt"],
        "state": {"slept": slept, "elapsed_seconds": slept}, "progress": slept / 10})
    assert resp.status_code == 200, resp.json


def beats(client: FlaskClient, worker: str, instance: str, task: dict[str, Any] | None = None):
    held = [{"task_id": task["task_id"], "attempt": task["attempt"]}] if task else []
    return lambda: client.post("/heartbeat", json={"worker_id": worker, "instance_id": instance,
                                                  "tasks": held})


def test_page_and_its_files_come_from_the_dispatcher(client: FlaskClient) -> None:
    for path in ("/", "/dashboard"):
        page = client.get(path)
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        html = page.get_data(as_text=True)
        assert 'src="dashboard/static/dashboard.js"' in html and "http" not in html.lower()
    for name, mimetype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = client.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and asset.mimetype == mimetype
        assert "https://" not in asset.get_data(as_text=True)  # nothing from another host


def test_a_dead_workers_task_leaves_a_timeline_of_what_happened(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    task_id = submit(client)
    first = claim(client, "w1", "i1")
    checkpoint(client, "w1", first, 4.0)
    claim_w2 = client.post("/get-task", json={"worker_id": "w2", "instance_id": "i2"})
    assert claim_w2.status_code == 204
    run_monitor(dispatcher, clock, 3, beats(client, "w2", "i2"))  # w1 goes silent
    second = claim(client, "w2", "i2")
    assert (second["task_id"], second["attempt"]) == (task_id, 2)
    events = client.get("/events").json["events"]
    assert [(e["kind"], e["task_id"], e["worker_id"]) for e in events] == [
        ("worker_dead", None, "w1"), ("dead_worker", task_id, "w1"), ("resumed", task_id, "w2")]
    dead, reclaimed, resumed = events
    assert dead["detail"].startswith("no heartbeat for ")
    assert (reclaimed["attempt"], reclaimed["status"], reclaimed["progress"]) == (1, "pending", 0.4)
    assert "declared dead" in reclaimed["detail"]
    assert (resumed["attempt"], resumed["progress"]) == (2, 0.4)
    assert "checkpoint at 40%" in resumed["detail"]
    assert dead["event_id"] < reclaimed["event_id"] < resumed["event_id"]
    assert reclaimed["at"] == dead["at"]  # written in the sweep's own transaction


def test_events_after_a_cursor_and_of_one_task(client: FlaskClient) -> None:
    ids = [submit(client) for _ in range(5)]
    for task_id in ids:
        assert client.post(f"/task/{task_id}/cancel", json={}).status_code == 200
    everything = client.get("/events").json
    assert [e["kind"] for e in everything["events"]] == ["cancelled"] * 5
    assert [e["task_id"] for e in everything["events"]] == ids
    cursor = everything["events"][1]["event_id"]
    page = client.get(f"/events?after={cursor}&limit=2").json
    assert [e["task_id"] for e in page["events"]] == ids[2:4]
    assert page["last_event_id"] == page["events"][-1]["event_id"]
    assert client.get(f"/events?after={page['last_event_id'] + 1}").json == {
        "events": [], "last_event_id": page["last_event_id"] + 1}
    newest = client.get("/events?limit=2").json["events"]
    assert [e["task_id"] for e in newest] == ids[3:]
    one = client.get(f"/events?task_id={ids[2]}").json["events"]
    assert [(e["task_id"], e["status"]) for e in one] == [(ids[2], "cancelled")]


@pytest.mark.parametrize("query, field", [
    ("after=-1", "after"), ("after=x", "after"), ("limit=0", "limit"), ("limit=1001", "limit"),
    ("task_id=0", "task_id"), ("task_id=1.5", "task_id")])
def test_bad_event_queries_name_the_field(client: FlaskClient, query: str, field: str) -> None:
    resp = client.get(f"/events?{query}")
    assert resp.status_code == 400 and resp.json["error"]["message"].startswith(f"{field}:")


def test_the_monitor_keeps_only_the_newest_events(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    ids = [submit(client) for _ in range(15)]
    for task_id in ids:
        client.post(f"/task/{task_id}/cancel", json={})
    dispatcher.store.sweep(2.0, 100, 1.0, events_kept=10)
    kept = client.get("/events?limit=100").json["events"]
    assert [e["task_id"] for e in kept] == ids[5:]
    dispatcher.store.sweep(2.0, 100, 1.0, events_kept=10)  # nothing more to trim
    assert len(client.get("/events?limit=100").json["events"]) == 10


def test_state_shows_workers_running_tasks_and_throughput(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    running_id = submit(client)
    task = claim(client, "w1", "i1")
    checkpoint(client, "w1", task, 2.5)
    done_id = submit(client, {"task_type": "noop", "params": {}})
    done = claim(client, "w2", "i2")
    assert done["task_id"] == done_id
    resp = client.post("/submit-result", json={"worker_id": "w2", "task_id": done_id,
                                               "attempt": 1, "result": {"ok": True}})
    assert resp.status_code == 200
    pending_id = submit(client)
    state = client.get("/dashboard/state")
    assert state.headers["Cache-Control"] == "no-store"
    state = state.json
    assert state["headline"] == {"workers_alive": 2, "workers_dead": 0, "workers_total": 2,
                                 "pending": 1, "delayed": 0, "running": 1,
                                 "done_per_second": state["headline"]["done_per_second"]}
    assert state["headline"]["done_per_second"] > 0
    assert state["tasks"]["completed"] == 1 and state["tasks"]["total"] == 3
    [running] = state["running"]
    assert (running["task_id"], running["worker_id"], running["progress"]) == (
        running_id, "w1", 0.25)
    assert running["seconds_since_checkpoint"] == 0
    workers = {w["worker_id"]: w for w in state["workers"]}
    assert workers["w1"]["running"] == [{"task_id": running_id, "progress": 0.25}]
    assert workers["w1"]["held"] == 1 and workers["w2"]["tasks_completed"] == 1
    assert [t["task_id"] for t in state["pending"]] == [pending_id]
    assert [(t["task_id"], t["status"]) for t in state["recent"]] == [(done_id, "completed")]
    series = state["throughput"]["series"]
    assert sum(series["completed"]) == 1 and series["completed"][-1] == 1
    assert len(series["completed"]) == 60 and state["throughput"]["bucket_seconds"] == 10


def test_state_marks_a_silent_worker_dead(
    client: FlaskClient, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    submit(client)
    claim(client, "w1", "i1")
    run_monitor(dispatcher, clock, 3)
    dispatcher.feed.forget()  # the document is reused for half a (real) second
    state = client.get("/dashboard/state").json
    assert state["headline"]["workers_alive"] == 0 and state["headline"]["workers_dead"] == 1
    [w1] = state["workers"]
    assert (w1["status"], w1["alive"], w1["held"]) == ("dead", False, 0)
    assert [e["kind"] for e in state["events"]] == ["dead_worker", "worker_dead"]  # newest first


def test_checkpoint_of_a_task(client: FlaskClient) -> None:
    task_id = submit(client)
    assert client.get(f"/task/{task_id}/checkpoint").json == {"task_id": task_id,
                                                              "checkpoint": None}
    task = claim(client, "w1", "i1")
    checkpoint(client, "w1", task, 3.0)
    found = client.get(f"/task/{task_id}/checkpoint").json["checkpoint"]
    assert found["state"] == {"slept": 3.0, "elapsed_seconds": 3.0}
    assert (found["progress"], found["attempt"]) == (0.3, 1)
    missing = client.get("/task/999999/checkpoint")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
