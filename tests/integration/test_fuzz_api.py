"""A Hypothesis fuzz of the HTTP API: arbitrary bodies, headers and credentials never make a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.app import create_app
from dispatcher.auth import Role, new_token
from dispatcher.models import dumps
from dispatcher.utils import deeper_than, json_longer_than, nesting_at_most
from shared.config import Config
from tests.conftest import FakeClock

ROUTES = [("POST", "/submit-task"), ("POST", "/get-task"), ("POST", "/heartbeat"),
          ("POST", "/checkpoint"), ("POST", "/release-task"), ("POST", "/submit-result"),
          ("GET", "/task/1"), ("POST", "/task/1/cancel"), ("GET", "/tasks"), ("GET", "/stats"),
          ("GET", "/health")]
FIELDS = ["task_type", "params", "priority", "max_attempts", "tasks", "worker_id",
          "instance_id", "wait", "max_tasks", "results", "task_id", "attempt", "state",
          "progress", "reason", "result", "error", "stopping"]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.sampled_from(["noop", "primes", "sleep", "w1", "shutdown", "unstarted"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner,
                                        max_size=4), max_leaves=20)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values
queries = st.sampled_from(["", "?wait=0", "?wait=x", "?limit=5", "?limit=0", "?status=bogus",
                           "?status=pending", "?wait=-1", "?limit=\u00b2"])


@pytest.fixture
def fuzzed(config: Config, clock: FakeClock) -> Iterator[tuple[FlaskClient, list[str]]]:
    """A dispatcher with credentials required, and one token of each role."""
    app = create_app(replace(config, auth_required="true"), clock=clock, start_monitor=False)
    store = app.extensions["taskqueue"].store
    texts = []
    for role, binding in [(Role.CLIENT, None), (Role.WORKER, "w1"), (Role.ADMIN, None)]:
        token = new_token()
        store.add_token(token.token_id, token.secret_hash, role.value, binding)
        texts.append(token.text)
    yield app.test_client(), texts
    app.extensions["taskqueue"].close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), query=queries, body=bodies, who=st.integers(-1, 3),
       content_type=st.sampled_from(["application/json", "text/plain", None]),
       raw=st.booleans(), junk=st.binary(max_size=40))
def test_no_request_makes_a_server_error(
        fuzzed: tuple[FlaskClient, list[str]], route: tuple[str, str], query: str, body: Any,
        who: int, content_type: str | None, raw: bool, junk: bytes) -> None:
    client, tokens = fuzzed
    headers = {}
    if 0 <= who < len(tokens):
        headers["Authorization"] = f"Bearer {tokens[who]}"
    elif who == -1:
        headers["Authorization"] = "Bearer tq_000000000000_" + "x" * 43
    method, path = route
    data = junk if raw else json.dumps(body).encode()
    if method == "GET":
        resp = client.get(path + query, headers=headers)
    else:
        resp = client.post(path, data=data, content_type=content_type, headers=headers)
    assert resp.status_code < 500, (resp.status_code, resp.data[:300])
    if resp.status_code >= 400:
        assert set(resp.json["error"]) == {"code", "message"}


@settings(max_examples=500, deadline=None)
@given(value=values, depth=st.integers(1, 8), pretty=st.booleans())
def test_the_raw_depth_scan_agrees_with_the_walk(value: Any, depth: int, pretty: bool) -> None:
    text = json.dumps(value, indent=1 if pretty else None).encode()
    assert nesting_at_most(text, depth) == (
        not isinstance(value, (dict, list)) or deeper_than(value, depth) is None)


@settings(max_examples=500, deadline=None)
@given(value=values, limit=st.integers(0, 300))
def test_the_size_lower_bound_never_overestimates(value: Any, limit: int) -> None:
    if json_longer_than(value, limit):
        assert len(dumps(value)) > limit
