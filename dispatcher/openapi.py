"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), generated, not written.

Request bodies come from the very pydantic models that validate them (``dispatcher/schemas.py``,
and each task type's params model from the registry, so ``POST /submit-task`` documents exactly
the task types this dispatcher accepts); response bodies from the models in
``dispatcher/responses.py``. Paths, methods and path parameters are read from the app's URL map,
and every route must have an entry in :data:`OPERATIONS` (a test checks it), so a new endpoint
cannot be served undocumented.

Error responses are one table, :data:`ERRORS`: each operation lists the statuses it can answer
with, and every one of them has the ``{"error": {"code", "message"}}`` body. The guard's
refusals are added by rule: 403 (Host, Origin) to every operation, 415 and 503 (body budget)
to every POST, and, when this dispatcher requires credentials, 401 and the bearer scheme to
every operation that is not open (each one's roles are in its description and ``x-roles``).
The document describes the dispatcher that serves it: without credentials (a loopback
dispatcher by default) it declares no security, as none is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel
from werkzeug.routing import Rule

from dispatcher import responses, schemas
from dispatcher.auth import declared_roles, is_static
from tasks.registry import Registry

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

ERRORS: dict[int, str] = {
    400: "Bad input: the message starts with the field (`invalid_field`, `invalid_json`, "
         "`too_deep`, `invalid_checkpoint`)",
    401: "Missing, malformed, unknown or revoked bearer token (`unauthorized`)",
    403: "Not allowed: the token's role, someone else's task or split job, a worker id the "
         "token is not bound to (`forbidden`); a `Host` or `Origin` this dispatcher does not "
         "serve (`bad_host`, `bad_origin`); a proxied request without credentials "
         "(`proxied_without_credentials`)",
    404: "No such task (or no such route)",
    405: "Method not allowed on this path (the `Allow` header lists the methods)",
    409: "Stale lease, illegal transition, or an idempotency key reused for another request "
         "(`stale_lease`, `already_finished`, `idempotency_conflict`)",
    413: "Body or an item of it too large (`too_large`, `result_too_large`, "
         "`request_entity_too_large`)",
    415: "A POST whose `Content-Type` is not `application/json`, even one without a body "
         "(`unsupported_media_type`)",
    429: "Too many submissions from this token (`rate_limited`, RATE_LIMIT) or too many of its "
         "tasks pending (`too_many_pending`, MAX_PENDING_PER_CLIENT); retry after "
         "`Retry-After`",
    503: "Storage busy, full or unreachable (`storage_unavailable`), or too many request bodies "
         "arriving at once (`busy`, BODY_BUDGET_BYTES); retry after `Retry-After`",
}
"""Every error status the API answers with, and what it means. All share one body schema."""
COMMON_ERRORS: tuple[int, ...] = (503,)
"""Statuses any operation that reads the database may answer with."""
GUARD_ERRORS: tuple[int, ...] = (403,)
"""Statuses of every operation: the Host and Origin checks run before any route."""
POST_ERRORS: tuple[int, ...] = (415, 503)
"""Statuses of every POST: its content type, the in-flight body budget."""
SECURITY_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "tq_<id>_<secret>",
                   "description": "A token from `python -m dispatcher.tokens create`"}
JSON_BODY_ERRORS: tuple[int, ...] = (400, 413)
"""Statuses of any operation that takes a JSON body."""


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Operation:
    """What the URL map cannot say about one (route, method)."""

    responses: dict[int, tuple[str, type[BaseModel] | None]]
    body: type[BaseModel] | str | None = None
    errors: tuple[int, ...] = ()
    query: tuple[Param, ...] = ()
    media: str = "application/json"
    """The media type of the success responses."""
    headers: tuple[str, ...] = ()
    """Request headers the operation reads (documented in :data:`HEADERS`)."""
    reads_database: bool = True
    tags: tuple[str, ...] = field(default=("queue",))


HEADERS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {
        "in": "header", "name": "Idempotency-Key", "required": False,
        "description": "A submission sent again with the same key is stored once; the "
                       "answer names the task stored first (200, `duplicate`). 1-200 characters.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    },
}
WAIT = Param("wait", {"type": "number", "minimum": 0, "maximum": 3600, "default": 0},
             "Long poll: answer as soon as the task finishes, at most this many seconds "
             "(capped by MAX_WAIT_SECONDS)")
_ONE_STATUS = "(?:" + "|".join(responses.TASK_STATUSES) + ")"  # plain names: no escaping
STATUS = Param(
    "status",
    {"type": "string",
     "pattern": rf"^\s*(?:{_ONE_STATUS}\s*)?(?:,\s*(?:{_ONE_STATUS}\s*)?)*$"},
    "Only tasks of these statuses: one, or several comma-separated (the parameter may also "
    "be repeated). Spaces around a name and empty items are ignored, so an empty value is no "
    "filter (every status)")
LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
              "At most this many tasks, newest first")
TASK_LIST_QUERY = (
    STATUS,
    Param("task_type", {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"},
          "Only tasks of this type"),
    Param("created_after", {"type": "number"},
          "Only tasks created at or after this time (Unix epoch seconds)"),
    Param("created_before", {"type": "number"},
          "Only tasks created before this time (Unix epoch seconds)"),
    LIMIT,
    Param("cursor", {"type": "string", "pattern": r"^(?:[A-Za-z0-9_-]{1,40}={0,2})?$"},
          "The `next_cursor` of the previous page, as it was given (opaque; empty or absent: "
          "the first page). Anything this server did not give is a 400"),
)

_OPTIONAL_ID = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 2**62},
                          {"type": "string", "maxLength": 0}]}
"""An id in a query, where an empty value means the parameter is absent."""

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/submit-task", "POST"): Operation(
        {201: ("Stored (one task, or a batch with at least one new task)",
               responses.Submitted),
         200: ("Every task was stored before under its idempotency key", responses.Submitted)},
        body="Submission", errors=(*JSON_BODY_ERRORS, 409, 429), headers=("Idempotency-Key",)),
    ("/get-task", "POST"): Operation(
        {200: ("Leased work: `task` (plain form) or `tasks` + `results` (batch form, when "
               "`max_tasks` or `results` is given)", responses.Claimed),
         204: ("Nothing pending within `wait` seconds (plain form only)", None)},
        body=schemas.GetTask, errors=JSON_BODY_ERRORS, tags=("workers",)),
    ("/submit-result", "POST"): Operation(
        {200: ("Recorded, or a duplicate of the recorded one; a batch lists each outcome",
               responses.ResultRecorded)},
        body="ResultSubmission", errors=(*JSON_BODY_ERRORS, 404, 409), tags=("workers",)),
    ("/heartbeat", "POST"): Operation(
        {200: ("Alive; every listed lease is still held", responses.HeartbeatAnswer)},
        body=schemas.Heartbeat, errors=(*JSON_BODY_ERRORS, 409), tags=("workers",)),
    ("/checkpoint", "POST"): Operation(
        {200: ("Saved; the lease is renewed", responses.CheckpointSaved)},
        body=schemas.SaveCheckpoint, errors=(*JSON_BODY_ERRORS, 404, 409), tags=("workers",)),
    ("/release-task", "POST"): Operation(
        {200: ("Back in the queue", responses.Released)},
        body=schemas.Release, errors=(*JSON_BODY_ERRORS, 404, 409), tags=("workers",)),
    ("/task/<task_id>", "GET"): Operation(
        {200: ("The task's view", responses.TaskView)}, errors=(400, 404), query=(WAIT,)),
    ("/task/<task_id>/cancel", "POST"): Operation(
        {200: ("Cancelled; the task's view", responses.TaskView)}, errors=(404, 409)),
    ("/task/<task_id>/retry", "POST"): Operation(
        {200: ("Back in the queue (pending, claimable at once, MAX_ATTEMPTS more attempts); "
               "the task's view", responses.TaskView)}, errors=(404, 409)),
    ("/schedules", "POST"): Operation(
        {201: ("Stored; it first fires at `next_run_at`", responses.ScheduleView)},
        body=schemas.NewSchedule, errors=JSON_BODY_ERRORS, tags=("schedules",)),
    ("/schedules", "GET"): Operation(
        {200: ("Every schedule, oldest first", responses.ScheduleList)}, tags=("schedules",)),
    ("/schedules/<schedule_id>", "DELETE"): Operation(
        {200: ("Stopped (the tasks it submitted stay)", responses.ScheduleDeleted)},
        errors=(404,), tags=("schedules",)),
    ("/tasks", "GET"): Operation(
        {200: ("A page of tasks, newest first, and the cursor of the next page",
               responses.TaskList)}, errors=(400,), query=TASK_LIST_QUERY),
    ("/group/<group_id>", "GET"): Operation(
        {200: ("The split job's view", responses.GroupView)}, errors=(404,), tags=("groups",)),
    ("/group/<group_id>/cancel", "POST"): Operation(
        {200: ("Every unfinished part is cancelled (none left: nothing changes); the split "
               "job's view", responses.GroupView)}, errors=(404,), tags=("groups",)),
    ("/stats", "GET"): Operation(
        {200: ("Counts per status, workers, throughput, reclaims by cause, the task "
               "lifecycle's failures", responses.Stats)},
        tags=("monitoring",)),
    ("/health", "GET"): Operation(
        {200: ("The database answers", responses.Health)}, tags=("monitoring",)),
    ("/metrics", "GET"): Operation(
        {200: ("Prometheus text exposition (the cluster's state read at scrape time, this "
               "dispatcher's counters)", None)},
        media="text/plain", reads_database=False, tags=("monitoring",)),
    ("/openapi.json", "GET"): Operation(
        {200: ("This document", None)}, reads_database=False, tags=("documentation",)),
    ("/docs", "GET"): Operation(
        {200: ("A browsable page of this document (Swagger UI, served by the dispatcher)",
               None)}, media="text/html", reads_database=False, tags=("documentation",)),
    ("/docs/assets/<name>", "GET"): Operation(
        {200: ("A file of the vendored Swagger UI", None)}, errors=(404,),
        media="application/octet-stream", reads_database=False, tags=("documentation",)),
    ("/", "GET"): Operation(
        {200: ("The live dashboard (an HTML page; the same as /dashboard)", None)},
        media="text/html", reads_database=False, tags=("dashboard",)),
    ("/dashboard", "GET"): Operation(
        {200: ("The live dashboard (an HTML page)", None)}, media="text/html",
        reads_database=False, tags=("dashboard",)),
    ("/dashboard/static/<filename>", "GET"): Operation(
        {200: ("A file of the dashboard page (script, style)", None)}, errors=(404,),
        media="application/octet-stream", reads_database=False, tags=("dashboard",)),
    ("/dashboard/state", "GET"): Operation(
        {200: ("Everything the dashboard shows, in one document", responses.DashboardState)},
        tags=("dashboard",)),
    ("/events", "GET"): Operation(
        {200: ("Timeline events", responses.EventList)}, errors=(400,),
        query=(Param("after", _OPTIONAL_ID, "Only the events after this event id, oldest "
                                            "first (a cursor); empty or absent: the newest"),
               Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                               "default": 100}, "At most this many events"),
               Param("task_id", {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 2**62},
                                           {"type": "string", "maxLength": 0}]},
                     "Only this task's events")),
        tags=("dashboard",)),
    ("/task/<task_id>/checkpoint", "GET"): Operation(
        {200: ("The task's latest checkpoint, or null", responses.LatestCheckpoint)},
        errors=(404,)),
    ("/static/<filename>", "GET"): Operation(
        {200: ("A file of the app's static folder (Flask's own route)", None)}, errors=(404,),
        media="application/octet-stream", reads_database=False, tags=("documentation",)),
}
"""Every (route rule without converters, method) the app serves; a test checks the coverage."""

_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def rule_key(rule: str) -> str:
    """A route rule without its converters: ``/task/<int(min=1):task_id>`` -> ``/task/<task_id>``."""
    return _PARAM.sub(r"<\1>", rule)


def routes(app: Flask) -> list[tuple[Rule, str]]:
    """Every (rule, method) the app serves, HEAD and OPTIONS left out."""
    return [(rule, method) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods or ()) if method not in ("HEAD", "OPTIONS")]


def build(app: Flask, registry: Registry, *, auth: bool = False) -> dict[str, Any]:
    """The OpenAPI document of ``app``; raises KeyError naming a route missing from OPERATIONS.

    ``auth``: the dispatcher requires credentials (documents the bearer scheme and 401).
    """
    components: dict[str, Any] = {}
    error = _ref(responses.ErrorBody, components)
    paths: dict[str, dict[str, Any]] = {}
    for rule, method in routes(app):
        key = (rule_key(rule.rule), method)
        if key not in OPERATIONS:
            raise KeyError(f"{method} {key[0]} is not documented in dispatcher/openapi.py")
        view = app.view_functions[rule.endpoint]
        path = _PARAM.sub(r"{\1}", rule.rule)
        paths.setdefault(path, {})[method.lower()] = _operation(
            OPERATIONS[key], rule, method, view, components, registry, auth)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Distributed task queue: dispatcher API", "version": "1",
                 "description": "Every body is JSON; every error is "
                                "`{\"error\": {\"code\": \"snake_case\", \"message\": \"...\"}}`."},
        "paths": paths,
        "components": {"schemas": components,
                       "responses": {f"Error{status}": {
                           "description": text,
                           "content": {"application/json": {"schema": error}}}
                           for status, text in ERRORS.items()}},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": SECURITY_SCHEME}
        document["security"] = [{"bearer": []}]
    return document


def _operation(op: Operation, rule: Rule, method: str, view: Any, components: dict[str, Any],
               registry: Registry, auth: bool) -> dict[str, Any]:
    summary, _, description = (view.__doc__ or "").strip().partition("\n")
    out: dict[str, Any] = {"summary": summary.strip(), "tags": list(op.tags),
                           "operationId": rule.endpoint.rsplit(".", 1)[-1]}
    allowed = None if is_static(rule.endpoint) else declared_roles(view)
    names = "open (no token)" if allowed is None else ", ".join(
        sorted(role.value for role in allowed))
    description = f"{description.strip()}\n\nRoles (with credentials on): {names}.".strip()
    out["description"] = description
    out["x-roles"] = [] if allowed is None else sorted(role.value for role in allowed)
    if allowed is None and auth:
        out["security"] = []  # open even where the rest needs a token
    parameters = _path_params(rule) + [HEADERS[name] for name in op.headers] + [
        {"in": "query", "name": p.name, "required": False, "schema": p.schema,
         "description": p.description} for p in op.query]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _body_schema(op.body, components, registry)}}}
    answers: dict[str, Any] = {}
    for status, (text, model) in sorted(op.responses.items()):
        answers[str(status)] = {"description": text}
        if model is not None:
            answers[str(status)]["content"] = {op.media: {"schema": _ref(model, components)}}
        elif status != 204:
            answers[str(status)]["content"] = {op.media: {"schema": {}}}
    errors = set(op.errors) | {405} | set(GUARD_ERRORS)  # 405: another method on the path
    if op.reads_database:
        errors |= set(COMMON_ERRORS)
    if method == "POST":
        errors |= set(POST_ERRORS)
    if auth and allowed is not None:
        errors.add(401)
    for status in sorted(errors):
        answers[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    out["responses"] = answers
    return out


def _path_params(rule: Rule) -> list[dict[str, Any]]:
    params = []
    for name in rule.arguments:
        converter = rule._converters[name]  # noqa: SLF001 - werkzeug keeps them only here
        schema: dict[str, Any] = {"type": "string"}
        if type(converter).__name__ == "IntegerConverter":
            schema = {"type": "integer"}
            if converter.min is not None:
                schema["minimum"] = converter.min
            if converter.max is not None:
                schema["maximum"] = converter.max
        params.append({"in": "path", "name": name, "required": True, "schema": schema})
    return params


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    """A $ref to ``model``, adding it (and the models it uses) to the components."""
    if model.__name__ not in components:
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _body_schema(body: type[BaseModel] | str, components: dict[str, Any],
                 registry: Registry) -> dict[str, Any]:
    if not isinstance(body, str):
        return _ref(body, components)
    if body == "ResultSubmission":
        return {"oneOf": [_ref(schemas.SubmitResult, components),
                          _ref(schemas.SubmitResults, components)]}
    task = _task_submission(components, registry)
    return {"oneOf": [task, {
        "type": "object", "additionalProperties": False, "required": ["tasks"],
        "description": "A batch (at most MAX_BATCH_SIZE tasks), stored in one transaction",
        "properties": {"tasks": {"type": "array", "minItems": 1, "items": task}}}]}


def _task_submission(components: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """One task: ``task_type`` chooses the params schema (the task type's own model)."""
    base = schemas.SubmitTask.model_json_schema(ref_template=REF)["properties"]
    variants = []
    for task_type in registry:
        params = _ref(task_type.params_model, components)
        needs_params = bool(task_type.params_model.model_json_schema().get("required"))
        variants.append({
            "type": "object", "additionalProperties": False, "title": task_type.name,
            "description": task_type.description,
            "required": ["task_type", "params"] if needs_params else ["task_type"],
            "properties": {"task_type": {"const": task_type.name}, "params": params,
                           **{name: schema for name, schema in base.items()
                              if name not in ("task_type", "params", "split")},
                           **({"split": base["split"]} if task_type.splittable else {})},
        })
    components["SubmitTask"] = {"oneOf": variants,
                                "description": schemas.SubmitTask.__doc__ or ""}
    return {"$ref": REF.format(model="SubmitTask")}
