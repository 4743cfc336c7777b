"""GET /openapi.json and /docs over the Flask test client: every route documented, every
error response with the one error body, the browsable page served from the dispatcher."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatcher import openapi
from dispatcher.app import create_app
from dispatcher.responses import Stats, TaskView
from shared.config import Config
from tests.conftest import FakeClock


def test_every_route_of_the_app_is_in_the_document(app: Flask, client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    served = openapi.routes(app)
    assert len(served) >= 15
    for rule, method in served:
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert method.lower() in paths.get(path, {}), f"{method} {rule.rule} is undocumented"
    assert sum(len(ops) for ops in paths.values()) == len(served)


def test_an_undocumented_route_stops_the_generator(app: Flask) -> None:
    app.add_url_rule("/surprise", "surprise", lambda: "")
    with pytest.raises(KeyError, match="GET /surprise"):
        openapi.build(app, app.extensions["taskqueue"].registry)


def test_every_error_status_has_the_error_body(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            codes = {int(code) for code in operation["responses"]}
            assert 405 in codes, (method, path)
            for code in codes - {200, 201, 204}:
                ref = operation["responses"][str(code)]["$ref"]
                response = doc["components"]["responses"][ref.rsplit("/", 1)[-1]]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}


@pytest.mark.parametrize(("method", "path", "codes"), [
    ("post", "/submit-task", {200, 201, 400, 403, 405, 409, 413, 415, 429, 503}),
    ("post", "/submit-result", {200, 400, 403, 404, 405, 409, 413, 415, 503}),
    ("post", "/checkpoint", {200, 400, 403, 404, 405, 409, 413, 415, 503}),
    ("get", "/task/{task_id}", {200, 400, 403, 404, 405, 503}),
    ("post", "/get-task", {200, 204, 400, 403, 405, 413, 415, 503}),
    ("post", "/group/{group_id}/cancel", {200, 403, 404, 405, 415, 503}),
    ("get", "/tasks", {200, 400, 403, 405, 503}),
])
def test_statuses_each_endpoint_can_answer(client: FlaskClient, method: str, path: str,
                                           codes: set[int]) -> None:
    operation = client.get("/openapi.json").json["paths"][path][method]
    assert {int(code) for code in operation["responses"]} == codes


def test_without_credentials_the_document_asks_for_none(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert "security" not in doc and "securitySchemes" not in doc["components"]
    assert all("401" not in op["responses"] for ops in doc["paths"].values()
               for op in ops.values())
    assert doc["paths"]["/tasks"]["get"]["x-roles"] == ["admin", "client"]


def test_with_credentials_every_operation_but_the_open_ones_needs_a_token(
        config: Config, clock: FakeClock) -> None:
    app = create_app(replace(config, auth_required="true"), clock=clock, start_monitor=False)
    try:
        answer = app.test_client().get("/openapi.json")  # open: the /docs page fetches it
        assert answer.status_code == 200
        doc = answer.json
    finally:
        app.extensions["taskqueue"].close()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]
    open_ops = {(path, method) for path, ops in doc["paths"].items()
                for method, op in ops.items() if op.get("security") == []}
    assert {("/health", "get"), ("/openapi.json", "get"), ("/docs", "get"),
            ("/dashboard", "get")} <= open_ops
    assert ("/metrics", "get") not in open_ops
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            needs_token = (path, method) not in open_ops
            assert ("401" in op["responses"]) == needs_token, (method, path)
            assert (op["x-roles"] != []) == needs_token, (method, path)
    assert doc["paths"]["/metrics"]["get"]["x-roles"] == ["admin", "client", "worker"]


def test_submission_schema_lists_the_registered_task_types(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    variants = doc["components"]["schemas"]["SubmitTask"]["oneOf"]
    names = {v["properties"]["task_type"]["const"] for v in variants}
    assert {"primes", "noop", "sleep"} <= names
    primes = next(v for v in variants if v["properties"]["task_type"]["const"] == "primes")
    params = doc["components"]["schemas"][primes["properties"]["params"]["$ref"].rsplit("/")[-1]]
    assert params["properties"]["algorithm"]["enum"] == ["sieve", "trial_division"]
    lifecycle = {"max_retries", "retry_backoff", "timeout_seconds", "run_at", "delay_seconds"}
    assert lifecycle <= set(primes["properties"]) and "split" in primes["properties"]
    noop = next(v for v in variants if v["properties"]["task_type"]["const"] == "noop")
    assert lifecycle <= set(noop["properties"]) and "split" not in noop["properties"]


def test_response_models_describe_real_answers(client: FlaskClient) -> None:
    task_id = client.post("/submit-task", json={"task_type": "noop", "params": {}}).json["task_id"]
    TaskView.model_validate(client.get(f"/task/{task_id}").json)
    client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "i1"})
    Stats.model_validate(client.get("/stats").json)


def test_docs_page_and_its_assets_come_from_the_dispatcher(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 3
    for asset in assets:
        resp = client.get(asset)
        assert resp.status_code == 200 and len(resp.data) > 100, asset
    assert client.get("/docs/assets/../app.py").status_code == 404
    assert client.get("/docs/assets/index.html").status_code == 404
