"""Bounds on what a client may send: sizes, nesting, ids; every refusal is a 4xx JSON error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.app import create_app
from shared.config import Config
from tests.conftest import FakeClock

SMALL = {"max_params_bytes": 200, "max_result_bytes": 300, "max_checkpoint_bytes": 250,
         "max_json_depth": 8, "max_request_bytes": 4096}


@pytest.fixture
def small(tmp_path: Path, clock: FakeClock) -> Iterator[FlaskClient]:
    """A dispatcher with tiny caps, so each limit is easy to cross."""
    config = Config(database_url=f"sqlite:///{tmp_path / 'tasks.db'}", **SMALL)
    app = create_app(config, clock=clock, start_monitor=False)
    yield app.test_client()
    app.extensions["taskqueue"].close()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def claimed(client: FlaskClient, params: dict[str, Any] | None = None) -> dict[str, Any]:
    client.post("/submit-task", json={"task_type": "noop", "params": params or {}})
    return client.post("/get-task", json={"worker_id": "w1", "instance_id": "i1"}).json["task"]


def assert_error(resp: Any, status: int, code: str, field: str) -> None:
    assert resp.status_code == status, resp.data[:300]
    assert resp.json["error"]["code"] == code
    assert resp.json["error"]["message"].startswith(field), resp.json


def test_json_nested_a_thousand_deep_is_a_400_not_a_500(client: FlaskClient) -> None:
    body = "[" * 1000 + "]" * 1000
    resp = client.post("/submit-task", data=f'{{"tasks": {body}}}',
                       content_type="application/json")
    assert_error(resp, 400, "too_deep", "")


def test_deep_params_are_refused_naming_the_path(small: FlaskClient) -> None:
    resp = small.post("/submit-task", json={"task_type": "noop", "params": {"a": nested(20)}})
    assert_error(resp, 400, "too_deep", "params.a")
    ok = small.post("/submit-task", json={"task_type": "noop", "params": {"a": nested(5)}})
    assert ok.status_code == 201


def test_params_nested_256_deep_on_the_default_config(client: FlaskClient) -> None:
    resp = client.post("/submit-task", json={"task_type": "noop", "params": {"a": nested(256)}})
    assert_error(resp, 400, "too_deep", "params.a")


@pytest.mark.parametrize("path", ["/task/{}", "/task/{}/cancel"])
@pytest.mark.parametrize("task_id", [2**63, 2**64 + 5, 10**30, 0])
def test_task_ids_out_of_range_are_404(client: FlaskClient, path: str, task_id: int) -> None:
    url = path.format(task_id)
    if url.endswith("cancel"):
        resp = client.post(url, content_type="application/json")
    else:
        resp = client.get(url)
    assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found"


@pytest.mark.parametrize("limit", ["²", "١٢", "-1", "0", "1e3", "99999999999", ""])
def test_list_limit_must_be_ascii_digits_in_range(client: FlaskClient, limit: str) -> None:
    assert_error(client.get("/tasks", query_string={"limit": limit}), 400, "invalid_field",
                 "limit")


def test_oversized_params_get_413_naming_the_item(small: FlaskClient) -> None:
    big = {"task_type": "noop", "params": {"blob": "x" * 300}}
    assert_error(small.post("/submit-task", json=big), 413, "too_large", "params")
    batch = {"tasks": [{"task_type": "noop", "params": {}}, big]}
    assert_error(small.post("/submit-task", json=batch), 413, "too_large", "tasks[1].params")
    assert small.get("/stats").json["tasks"]["total"] == 0  # nothing of the batch was stored


def test_oversized_checkpoint_state_gets_413_and_keeps_the_last(small: FlaskClient) -> None:
    task = claimed(small)
    base = {"worker_id": "w1", "task_id": task["task_id"], "attempt": 1}
    assert small.post("/checkpoint", json={**base, "state": {"n": 1}}).status_code == 200
    resp = small.post("/checkpoint", json={**base, "state": {"blob": "x" * 400}})
    assert_error(resp, 413, "too_large", "state")
    resp = small.post("/release-task", json={**base, "state": {"blob": "x" * 400}})
    assert_error(resp, 413, "too_large", "state")
    assert small.get(f"/task/{task['task_id']}").json["status"] == "in-progress"


def test_oversized_result_fails_the_task_with_the_cause(small: FlaskClient) -> None:
    task = claimed(small)
    body = {"worker_id": "w1", "task_id": task["task_id"], "attempt": 1,
            "result": {"blob": "x" * 400}}
    assert_error(small.post("/submit-result", json=body), 413, "result_too_large", "result")
    view = small.get(f"/task/{task['task_id']}").json
    assert view["status"] == "failed" and "MAX_RESULT_BYTES" in view["error"]
    assert view["result"] is None
    # The same report again (a worker retrying) is answered the same way, still failed.
    assert_error(small.post("/submit-result", json=body), 413, "result_too_large", "result")


def test_oversized_result_in_a_batch_is_refused_alone(small: FlaskClient) -> None:
    ids = small.post("/submit-task", json={"tasks": [{"task_type": "noop", "params": {}}] * 2}
                     ).json["task_ids"]
    small.post("/get-task", json={"worker_id": "w1", "instance_id": "i1", "max_tasks": 2})
    results = [{"task_id": ids[0], "attempt": 1, "result": {"ok": True}},
               {"task_id": ids[1], "attempt": 1, "result": {"blob": "x" * 400}}]
    resp = small.post("/get-task", json={"worker_id": "w1", "instance_id": "i1",
                                         "max_tasks": 0, "results": results})
    assert [r["outcome"] for r in resp.json["results"]] == ["accepted", "refused"]
    assert small.get(f"/task/{ids[0]}").json["status"] == "completed"
    assert small.get(f"/task/{ids[1]}").json["status"] == "failed"


def test_body_over_the_request_limit_is_a_json_413(small: FlaskClient) -> None:
    resp = small.post("/submit-task", data="x" * 5000, content_type="application/json")
    assert resp.status_code == 413 and resp.json["error"]["code"] == "request_entity_too_large"


def test_caps_must_fit_in_a_request() -> None:
    from shared.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="MAX_RESULT_BYTES"):
        load_config(env={"MAX_RESULT_BYTES": "9000000", "MAX_REQUEST_BYTES": "16000000"})
