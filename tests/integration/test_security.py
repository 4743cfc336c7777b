"""Credentials, roles and the request guard over the Flask test client, on both stores.

Each attack on an open dispatcher is reproduced here against one with credentials required,
with the refusal it now gets and a check that the queue is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatcher.app import create_app
from dispatcher.auth import Role, is_declared, is_static, new_token
from dispatcher.guard import BodyBudget
from shared.config import Config
from tests.conftest import FakeClock

NOOP = {"task_type": "noop", "params": {"x": 1}}
JSON = "application/json"


class Tokens:
    """The tokens of one secured app: two clients, two bound workers, a prefix, an admin."""

    def __init__(self, app: Flask) -> None:
        store = app.extensions["taskqueue"].store
        self.texts: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        for name, role, binding in [
            ("client", Role.CLIENT, None), ("client_b", Role.CLIENT, None),
            ("worker", Role.WORKER, "w1"), ("other_worker", Role.WORKER, "w2"),
            ("host_a", Role.WORKER, "host-a-*"), ("admin", Role.ADMIN, None),
        ]:
            token = new_token()
            store.add_token(token.token_id, token.secret_hash, role.value, binding)
            self.texts[name], self.ids[name] = token.text, token.token_id

    def auth(self, name: str | None) -> dict[str, str]:
        """Headers for a caller: a named token, "bad" (well-formed, unknown), or None."""
        if name is None:
            return {}
        if name == "bad":
            return {"Authorization": f"Bearer {new_token().text}"}
        return {"Authorization": f"Bearer {self.texts[name]}"}


def secured_app(config: Config, clock: FakeClock, **changes: Any) -> Flask:
    return create_app(replace(config, auth_required="true", token_cache_seconds=0, **changes),
                      clock=clock, start_monitor=False)


@pytest.fixture
def secured(config: Config, clock: FakeClock) -> Iterator[tuple[FlaskClient, Tokens]]:
    """A dispatcher with credentials required (tokens checked on every request)."""
    app = secured_app(config, clock)
    yield app.test_client(), Tokens(app)
    app.extensions["taskqueue"].close()


Caller = Callable[..., Any]


def calls(client: FlaskClient, tokens: Tokens) -> Caller:
    """``call(name, method, path, body=None)`` as the named caller."""

    def call(name: str | None, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        headers = {**tokens.auth(name), **kw.pop("headers", {})}
        if method in ("GET", "DELETE"):
            return client.open(path, method=method, headers=headers, **kw)
        return client.post(path, json=body if body is not None else {}, headers=headers, **kw)

    return call


def submitted(call: Caller, who: str = "client", body: dict[str, Any] = NOOP) -> int:
    resp = call(who, "POST", "/submit-task", body)
    assert resp.status_code == 201, resp.json
    return resp.json["task_id"]


def leased(call: Caller, worker: str = "w1", who: str = "worker") -> dict[str, Any]:
    resp = call(who, "POST", "/get-task", {"worker_id": worker, "instance_id": "i1"})
    assert resp.status_code == 200, resp.json
    return resp.json["task"]


# -- every route declares its roles -----------------------------------------------------------


def test_every_route_declares_who_may_call_it(app: Flask) -> None:
    undeclared = [rule.rule for rule in app.url_map.iter_rules() if not is_static(rule.endpoint)
                  and not is_declared(app.view_functions[rule.endpoint])]
    assert undeclared == []


# -- the matrix: every endpoint x every kind of caller -----------------------------------------

CALLERS = (None, "bad", "client", "worker", "other_worker", "admin")
ALLOWED = {  # endpoint -> callers that get past the credentials check
    "submit": {"client", "admin"}, "claim": {"worker", "admin"},
    "heartbeat": {"worker", "admin"}, "checkpoint": {"worker", "admin"},
    "release": {"worker", "admin"}, "result": {"worker", "admin"},
    "view": {"client", "admin"}, "cancel": {"client", "admin"}, "list": {"client", "admin"},
    "stats": {"client", "worker", "other_worker", "admin"}, "health": set(CALLERS),
    "group": {"client", "admin"}, "group_cancel": {"client", "admin"},
    "page": set(CALLERS), "dashboard": set(CALLERS), "dashboard_static": set(CALLERS),
    "dashboard_state": {"admin"}, "events": {"admin"}, "checkpoint_view": {"admin"},
    "retry": {"client", "admin"}, "schedule_add": {"admin"}, "schedules": {"admin"},
    "schedule_delete": {"admin"},
}
SPLIT = {"task_type": "primes", "params": {"limit": 1000}, "split": 4}


def test_auth_matrix_over_every_endpoint(secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    task_id = submitted(call)
    group_id = call("client", "POST", "/submit-task", SPLIT).json["group_id"]
    held = {"worker_id": "w1", "task_id": task_id, "attempt": 1}
    requests = {
        "submit": ("POST", "/submit-task", NOOP),
        "claim": ("POST", "/get-task", {"worker_id": "w1", "instance_id": "i1"}),
        "heartbeat": ("POST", "/heartbeat", {"worker_id": "w1", "instance_id": "i1",
                                             "tasks": [{"task_id": task_id, "attempt": 1}]}),
        "checkpoint": ("POST", "/checkpoint", {**held, "state": {}, "progress": 0.1}),
        "release": ("POST", "/release-task", {**held, "reason": "unstarted"}),
        "result": ("POST", "/submit-result", {**held, "result": {"ok": True}}),
        "view": ("GET", f"/task/{task_id}", None),
        "cancel": ("POST", f"/task/{task_id}/cancel", None),
        "list": ("GET", "/tasks", None),
        "stats": ("GET", "/stats", None),
        "health": ("GET", "/health", None),
        "group": ("GET", f"/group/{group_id}", None),
        "group_cancel": ("POST", f"/group/{group_id}/cancel", None),
        "page": ("GET", "/", None),
        "dashboard": ("GET", "/dashboard", None),
        "dashboard_static": ("GET", "/dashboard/static/dashboard.js", None),
        "dashboard_state": ("GET", "/dashboard/state", None),
        "events": ("GET", "/events", None),
        "checkpoint_view": ("GET", f"/task/{task_id}/checkpoint", None),
        "retry": ("POST", f"/task/{task_id}/retry", None),
        "schedule_add": ("POST", "/schedules", {**NOOP, "every_seconds": 3600}),
        "schedules": ("GET", "/schedules", None),
        "schedule_delete": ("DELETE", "/schedules/999999", None),
    }
    wrong = []
    for endpoint, (method, path, body) in requests.items():
        for caller in CALLERS:
            status = call(caller, method, path, body).status_code
            if caller in ALLOWED[endpoint]:
                expected_ok = status not in (401, 403) and status < 500
            elif caller in (None, "bad"):
                expected_ok = status == 401
            else:
                expected_ok = status == 403
            if not expected_ok:
                wrong.append((endpoint, caller, status))
    assert wrong == []


# -- attacks, each refused ---------------------------------------------------------------------


def test_forged_results_are_refused_and_the_real_result_stands(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    submitted(call)
    task = leased(call, worker="w1")
    forged = {"task_id": task["task_id"], "attempt": 1, "result": {"forged": True}}
    assert call("client", "POST", "/submit-result", {**forged, "worker_id": "w1"}
                ).json["error"]["code"] == "forbidden"
    resp = call("other_worker", "POST", "/submit-result", {**forged, "worker_id": "w1"})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden"
    # As itself, the other worker does not hold the lease: fencing refuses it.
    assert call("other_worker", "POST", "/submit-result",
                {**forged, "worker_id": "w2"}).status_code == 409
    real = {"task_id": task["task_id"], "attempt": 1, "worker_id": "w1", "result": {"n": 7}}
    assert call("worker", "POST", "/submit-result", real).status_code == 200
    assert call("other_worker", "POST", "/submit-result",
                {**forged, "worker_id": "w1"}).status_code == 403
    view = call("client", "GET", f"/task/{task['task_id']}").json
    assert (view["status"], view["result"], view["worker_id"]) == ("completed", {"n": 7}, "w1")


def test_a_poisoned_checkpoint_from_another_worker_is_refused(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    submitted(call)
    task = leased(call)
    base = {"task_id": task["task_id"], "attempt": 1, "worker_id": "w1"}
    assert call("worker", "POST", "/checkpoint", {**base, "state": {"n": 1}, "progress": 0.2}
                ).status_code == 200
    resp = call("other_worker", "POST", "/checkpoint",
                {**base, "state": {"poison": True}, "progress": 0.9})
    assert resp.status_code == 403
    assert call("client", "POST", "/checkpoint", {**base, "state": {}, "progress": 0.9}
                ).status_code == 403
    assert call("admin", "GET", f"/task/{task['task_id']}").json["progress"] == 0.2


def test_a_foreign_heartbeat_cannot_revoke_a_workers_tasks(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    submitted(call)
    task = leased(call)
    # A heartbeat as w1 from a new "instance" would hand w1's tasks back to the queue.
    resp = call("other_worker", "POST", "/heartbeat", {"worker_id": "w1", "instance_id": "evil"})
    assert resp.status_code == 403
    view = call("admin", "GET", f"/task/{task['task_id']}").json
    assert (view["status"], view["worker_id"], view["attempt"]) == ("in-progress", "w1", 1)


def test_a_client_cannot_claim_tasks(secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    task_id = submitted(call)
    resp = call("client", "POST", "/get-task", {"worker_id": "grief", "max_tasks": 1000})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden"
    assert call("client", "GET", f"/task/{task_id}").json["status"] == "pending"


def test_clients_see_and_cancel_only_their_own_tasks(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    mine = submitted(call, "client")
    theirs = submitted(call, "client_b")
    assert call("client_b", "GET", f"/task/{mine}").status_code == 403
    assert call("client_b", "GET", f"/task/{mine}?wait=5").status_code == 403
    assert call("client_b", "POST", f"/task/{mine}/cancel").status_code == 403
    assert call("client", "GET", f"/task/{mine}").json["status"] == "pending"
    assert [t["task_id"] for t in call("client_b", "GET", "/tasks").json["tasks"]] == [theirs]
    assert [t["task_id"] for t in call("client", "GET", "/tasks").json["tasks"]] == [mine]
    assert {t["task_id"] for t in call("admin", "GET", "/tasks").json["tasks"]} == {mine, theirs}
    assert call("admin", "POST", f"/task/{theirs}/cancel").json["status"] == "cancelled"
    assert call("client", "POST", f"/task/{theirs}/retry").status_code == 403
    assert call("client_b", "POST", f"/task/{theirs}/retry").json["status"] == "pending"


def test_clients_see_and_cancel_only_their_own_split_jobs(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    mine = call("client", "POST", "/submit-task", SPLIT).json
    assert call("client_b", "GET", f"/group/{mine['group_id']}").status_code == 403
    assert call("client_b", "POST", f"/group/{mine['group_id']}/cancel").status_code == 403
    assert call("client_b", "GET", f"/task/{mine['task_ids'][0]}").status_code == 403
    assert call("client_b", "GET", "/group/999").status_code == 404
    view = call("client", "GET", f"/group/{mine['group_id']}").json
    assert view["status"] == "pending" and view["parts"]["pending"] == len(mine["task_ids"])
    # The parts are the client's tasks: listed for it, counted against its pending cap.
    listed = [t["task_id"] for t in call("client", "GET", "/tasks").json["tasks"]]
    assert listed == sorted(mine["task_ids"], reverse=True)
    assert call("client_b", "GET", "/tasks").json["tasks"] == []
    assert call("admin", "POST", f"/group/{mine['group_id']}/cancel").json["status"] == \
        "cancelled"


def test_a_clients_task_list_pages_through_its_own_tasks_only(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    mine, theirs = [], []
    for i in range(7):
        mine.append(submitted(call, "client"))
        theirs.append(submitted(call, "client_b"))
    call("client", "POST", f"/task/{mine[2]}/cancel")
    seen, cursor = [], ""
    while cursor is not None:
        page = call("client", "GET", f"/tasks?limit=3&cursor={cursor}").json
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
    assert seen == mine[::-1]
    both = call("client", "GET", "/tasks?status=pending,cancelled&task_type=noop").json["tasks"]
    assert [t["task_id"] for t in both] == mine[::-1]
    cancelled = call("client", "GET", "/tasks?status=cancelled").json["tasks"]
    assert [t["task_id"] for t in cancelled] == [mine[2]]
    everyone = call("admin", "GET", "/tasks?limit=100").json["tasks"]
    assert {t["task_id"] for t in everyone} == set(mine + theirs)


def test_a_prefix_bound_token_acts_only_for_its_workers(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    for worker in ("host-a-1", "host-a-2"):
        assert call("host_a", "POST", "/heartbeat", {"worker_id": worker}).status_code == 200
    assert call("host_a", "POST", "/heartbeat", {"worker_id": "host-b-1"}).status_code == 403
    assert call("worker", "POST", "/heartbeat", {"worker_id": "w1x"}).status_code == 403


def test_a_revoked_token_is_refused(secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    submitted(call)
    store = client.application.extensions["taskqueue"].store
    assert store.revoke_token(tokens.ids["client"])
    resp = call("client", "GET", "/tasks")
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"
    assert not store.revoke_token(tokens.ids["client"])  # already revoked


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz", "Bearer", "Bearer tq_0123_short", "tq_0123456789ab_" + "a" * 43])
def test_malformed_credentials_get_401(secured: tuple[FlaskClient, Tokens], header: str) -> None:
    client, _ = secured
    resp = client.get("/tasks", headers={"Authorization": header})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"


def test_a_secret_with_a_known_id_but_wrong_secret_is_refused(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    token_id = tokens.ids["admin"]
    resp = client.get("/tasks", headers={"Authorization": f"Bearer tq_{token_id}_{'A' * 43}"})
    assert resp.status_code == 401


def test_tokens_never_reach_the_log(secured: tuple[FlaskClient, Tokens],
                                    caplog: pytest.LogCaptureFixture) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    with caplog.at_level(logging.DEBUG):
        submitted(call)
        task = leased(call)
        call("worker", "POST", "/submit-result", {"worker_id": "w1", "task_id": task["task_id"],
                                                  "attempt": 1, "result": 1})
        call("bad", "GET", "/tasks")
    for text in tokens.texts.values():
        assert text.split("_", 2)[2] not in caplog.text


# -- requests a browser can forge ----------------------------------------------------------------


@pytest.mark.parametrize(("data", "content_type"), [
    ('{"task_type": "noop"}', "text/plain"),
    ("task_type=noop", "application/x-www-form-urlencoded"),
    ("--b\r\n", "multipart/form-data; boundary=b"),
    (None, None),
])
def test_posts_that_are_not_json_get_415(client: FlaskClient, data: str | None,
                                         content_type: str | None) -> None:
    resp = client.post("/submit-task", data=data, content_type=content_type)
    assert resp.status_code == 415 and resp.json["error"]["code"] == "unsupported_media_type"
    assert client.get("/stats").json["tasks"]["total"] == 0


def test_a_body_less_cancel_needs_the_json_content_type(client: FlaskClient) -> None:
    task_id = client.post("/submit-task", json=NOOP).json["task_id"]
    assert client.post(f"/task/{task_id}/cancel").status_code == 415
    assert client.get(f"/task/{task_id}").json["status"] == "pending"
    assert client.post(f"/task/{task_id}/cancel", content_type=JSON).status_code == 200


def test_a_foreign_origin_is_refused_and_gets_no_cors_headers(client: FlaskClient) -> None:
    resp = client.post("/submit-task", json=NOOP, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "bad_origin"
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert client.get("/stats").json["tasks"]["total"] == 0
    same = client.post("/submit-task", json=NOOP, headers={"Origin": "http://localhost"})
    assert same.status_code == 201 and "Access-Control-Allow-Origin" not in same.headers


def test_listed_cors_origins_are_allowed(config: Config, clock: FakeClock) -> None:
    app = create_app(replace(config, cors_origins="https://ops.example.com"), clock=clock,
                     start_monitor=False)
    client = app.test_client()
    try:
        origin = {"Origin": "https://ops.example.com"}
        resp = client.get("/stats", headers=origin)
        assert resp.status_code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
        pre = client.options("/submit-task", headers={
            **origin, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and "Authorization" in pre.headers[
            "Access-Control-Allow-Headers"]
        assert client.get("/stats", headers={"Origin": "https://evil.example"}).status_code == 403
    finally:
        app.extensions["taskqueue"].close()


def test_a_rebound_host_name_is_refused(client: FlaskClient) -> None:
    resp = client.post("/submit-task", json=NOOP, base_url="http://attacker.example:5000")
    assert resp.status_code == 403 and resp.json["error"]["code"] == "bad_host"
    for base in ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]:5000"):
        assert client.get("/stats", base_url=base).status_code == 200
    assert client.get("/stats").json["tasks"]["total"] == 0


def test_allowed_hosts_extend_the_accepted_names(config: Config, clock: FakeClock) -> None:
    app = create_app(replace(config, allowed_hosts="queue.internal"), clock=clock,
                     start_monitor=False)
    try:
        client = app.test_client()
        assert client.get("/stats", base_url="http://queue.internal").status_code == 200
        assert client.get("/stats", base_url="http://other.internal").status_code == 403
    finally:
        app.extensions["taskqueue"].close()


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"])
def test_a_proxied_request_without_credentials_is_refused(client: FlaskClient,
                                                          header: str) -> None:
    resp = client.post("/submit-task", json=NOOP, headers={header: "203.0.113.9"})
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "proxied_without_credentials"
    assert client.get("/health", headers={header: "203.0.113.9"}).status_code == 200


def test_a_proxied_request_with_credentials_is_served(
        secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    resp = call("client", "POST", "/submit-task", NOOP, headers={"X-Forwarded-For": "10.1.2.3"})
    assert resp.status_code == 201


# -- quotas and bounds -----------------------------------------------------------------------------


def test_submissions_past_the_rate_limit_get_429(config: Config, clock: FakeClock) -> None:
    app = secured_app(config, clock, rate_limit="3/minute")
    try:
        tokens = Tokens(app)
        call = calls(app.test_client(), tokens)
        for _ in range(3):
            submitted(call)
        resp = call("client", "POST", "/submit-task", NOOP)
        assert resp.status_code == 429 and resp.json["error"]["code"] == "rate_limited"
        assert int(resp.headers["Retry-After"]) >= 1
        assert call("client_b", "POST", "/submit-task", NOOP).status_code == 201  # per token
    finally:
        app.extensions["taskqueue"].close()


def test_a_client_may_have_only_so_many_pending_tasks(config: Config, clock: FakeClock) -> None:
    app = secured_app(config, clock, max_pending_per_client=3)
    try:
        tokens = Tokens(app)
        call = calls(app.test_client(), tokens)
        submitted(call)
        batch = {"tasks": [NOOP, NOOP, NOOP]}
        resp = call("client", "POST", "/submit-task", batch)
        assert resp.status_code == 429 and resp.json["error"]["code"] == "too_many_pending"
        assert call("client", "POST", "/submit-task", {"tasks": [NOOP, NOOP]}
                    ).status_code == 201
        assert call("client", "POST", "/submit-task", NOOP).status_code == 429
        assert len(call("client", "GET", "/tasks").json["tasks"]) == 3
        leased(call)  # one pending task fewer: room for one more
        split = call("client", "POST", "/submit-task", {**SPLIT, "split": 2})
        assert split.status_code == 429  # a split job's parts count too
        submitted(call)
        assert call("admin", "POST", "/submit-task", batch).status_code == 201  # no cap
    finally:
        app.extensions["taskqueue"].close()


def test_large_fields_are_left_out_of_the_list_view(client: FlaskClient) -> None:
    body = {"task_type": "noop", "params": {"blob": "x" * 5000}}
    task_id = client.post("/submit-task", json=body).json["task_id"]
    client.post("/submit-task", json=NOOP)
    listed = {t["task_id"]: t for t in client.get("/tasks").json["tasks"]}
    assert listed[task_id]["params"] is None and listed[task_id]["truncated"] == ["params"]
    assert "truncated" not in listed[task_id + 1]
    assert client.get(f"/task/{task_id}").json["params"] == body["params"]


def test_long_error_texts_are_cut_to_the_limit(client: FlaskClient) -> None:
    client.post("/submit-task", json=NOOP)
    task = client.post("/get-task", json={"worker_id": "w1", "instance_id": "i1"}).json["task"]
    resp = client.post("/submit-result", json={"worker_id": "w1", "task_id": task["task_id"],
                                               "attempt": 1, "error": "é" * 50_000})
    assert resp.status_code == 200
    error = client.get(f"/task/{task['task_id']}").json["error"]
    assert len(error.encode()) <= 10_000 and "truncated: 100000 bytes" in error


@pytest.mark.parametrize("attempts", [0, 101])
def test_max_attempts_is_1_to_100(client: FlaskClient, attempts: int) -> None:
    resp = client.post("/submit-task", json={**NOOP, "max_attempts": attempts})
    assert resp.status_code == 400 and "max_attempts" in resp.json["error"]["message"]


@pytest.mark.parametrize(("params", "field"), [
    ({"task_type": "sleep", "params": {"seconds": 601}}, "params.seconds"),
    ({"task_type": "cpu_burn", "params": {"seconds": 601}}, "params.seconds"),
    ({"task_type": "primes", "params": {"limit": 10**9 + 1, "algorithm": "trial_division"}},
     "params.start"),
])
def test_per_task_type_work_limits(client: FlaskClient, params: dict[str, Any],
                                   field: str) -> None:
    resp = client.post("/submit-task", json=params)
    assert resp.status_code == 400 and field in resp.json["error"]["message"]


def test_the_body_budget_refuses_what_would_go_over() -> None:
    budget = BodyBudget(100)
    assert budget.take(60) and not budget.take(60)
    budget.give_back(60)
    assert budget.take(60) and budget.take(40) and not budget.take(1)
    alone = BodyBudget(100)
    assert alone.take(500)  # one request alone always passes (MAX_REQUEST_BYTES bounds it)


# -- idempotency keys ---------------------------------------------------------------------------


def test_a_key_reused_with_another_payload_is_a_conflict(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "order-1"}
    first = client.post("/submit-task", json=NOOP, headers=key)
    assert first.status_code == 201
    again = client.post("/submit-task", json=NOOP, headers=key)
    assert (again.status_code, again.json["task_id"]) == (200, first.json["task_id"])
    other = client.post("/submit-task", json={**NOOP, "params": {"x": 2}}, headers=key)
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_conflict"
    batch = client.post("/submit-task", json={"tasks": [NOOP, {**NOOP, "priority": 5}]},
                        headers=key)  # the same key names a batch: its own scope
    assert batch.status_code == 201 and first.json["task_id"] not in batch.json["task_ids"]
    changed = client.post("/submit-task", json={"tasks": [NOOP, NOOP]}, headers=key)
    assert changed.status_code == 409
    assert client.get("/stats").json["tasks"]["total"] == 3  # nothing of the conflict stored


def test_a_split_job_key_reused_with_another_payload_is_a_conflict(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "split-1"}
    first = client.post("/submit-task", json=SPLIT, headers=key)
    assert first.status_code == 201
    again = client.post("/submit-task", json=SPLIT, headers=key)
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert (again.json["group_id"], again.json["task_ids"]) == (
        first.json["group_id"], first.json["task_ids"])
    for changed in ({**SPLIT, "split": 3}, {**SPLIT, "params": {"limit": 999}},
                    {**SPLIT, "priority": 2}):
        other = client.post("/submit-task", json=changed, headers=key)
        assert other.status_code == 409, changed
        assert other.json["error"]["code"] == "idempotency_conflict"
    single = client.post("/submit-task", json=NOOP, headers=key)  # a task's key: its own scope
    assert single.status_code == 201
    assert client.get("/stats").json["tasks"]["total"] == len(first.json["task_ids"]) + 1


def test_two_clients_split_job_keys_never_collide(secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    key = {"Idempotency-Key": "same"}
    a = call("client", "POST", "/submit-task", SPLIT, headers=key)
    b = call("client_b", "POST", "/submit-task", SPLIT, headers=key)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json["group_id"] != b.json["group_id"]
    again = call("client", "POST", "/submit-task", {**SPLIT, "split": 2}, headers=key)
    assert again.status_code == 409


def test_two_clients_keys_never_collide(secured: tuple[FlaskClient, Tokens]) -> None:
    client, tokens = secured
    call = calls(client, tokens)
    key = {"Idempotency-Key": "same"}
    a = call("client", "POST", "/submit-task", NOOP, headers=key)
    b = call("client_b", "POST", "/submit-task", NOOP, headers=key)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json["task_id"] != b.json["task_id"]


# -- hardening ------------------------------------------------------------------------------------


def test_defaults_bind_loopback_without_debug(app: Flask) -> None:
    assert Config().dispatcher_host == "127.0.0.1" and not Config().auth_enabled
    assert Config(dispatcher_host="0.0.0.0").auth_enabled
    assert not app.debug and not app.testing


def test_an_unexpected_error_answers_json_500_without_a_traceback(
        app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 42")

    monkeypatch.setattr(app.extensions["taskqueue"], "stats", explode)
    resp = client.get("/stats")
    assert resp.status_code == 500
    assert resp.json == {"error": {"code": "internal_error", "message": "internal error"}}
    assert b"Traceback" not in resp.data and b"secret" not in resp.data
