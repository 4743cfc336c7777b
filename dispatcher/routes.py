"""REST endpoints: validate the request, call one dispatcher operation, answer JSON."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import re
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, send_file
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher import openapi
from dispatcher.auth import Role, public, require_owner, require_worker, roles
from dispatcher.db import (
    IdempotencyConflict,
    NotFound,
    QuotaExceeded,
    StaleLease,
    StorageUnavailable,
)
from dispatcher.guard import Guard, principal
from dispatcher.models import (
    NewTask,
    Outcome,
    OutcomeKind,
    ReclaimCause,
    Report,
    Task,
    TaskQuery,
    TaskStatus,
    dumps,
    group_key,
    scoped_key,
)
from dispatcher.scheduler import cron_error
from dispatcher.schemas import (
    MAX_DELAY_SECONDS,
    GetTask,
    Heartbeat,
    NewSchedule,
    Release,
    ResultItem,
    SaveCheckpoint,
    SubmitBatch,
    SubmitResult,
    SubmitResults,
    SubmitTask,
)
from dispatcher.service import Dispatcher
from dispatcher.utils import ApiError, json_body, json_longer_than, parse
from tasks.base import InvalidCheckpoint, InvalidParams

api = Blueprint("api", __name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_LIST_LIMIT = 1000
MAX_TASK_ID = 2**62
"""Larger ids in a URL cannot exist (the store's ids are 64-bit); they answer 404."""
TASK_ID = f"int(min=1, max={MAX_TASK_ID}):task_id"
GROUP_ID = f"int(min=1, max={MAX_TASK_ID}):group_id"
_TASK_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,40}={0,2}")
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also accepts '²'
_DIGITS_ANY = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
"""A JSON number as a query parameter spells it (no spaces, no '_', no 'inf'/'nan')."""
SWAGGER_UI = Path(__file__).resolve().parent / "swagger_ui"
DOC_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
              "init.js": "text/javascript", "LICENSE": "text/plain", "NOTICE": "text/plain"}
"""The files of the vendored Swagger UI that /docs/assets serves (nothing else is)."""


CLIENTS = (Role.CLIENT, Role.ADMIN)
WORKERS = (Role.WORKER, Role.ADMIN)


def _dispatcher() -> Dispatcher:
    return current_app.extensions["taskqueue"]


def _guard() -> Guard:
    return current_app.extensions["taskqueue_guard"]


def _body() -> dict[str, Any]:
    return json_body(request, _dispatcher().config.max_json_depth)


def _check_size(field: str, value: Any, limit: int, setting: str) -> str:
    """The canonical JSON of ``value``; 413 naming the field when it is over ``limit`` bytes."""
    if json_longer_than(value, 2 * limit):  # without serialising a huge value whole
        raise ApiError(413, "too_large", f"{field}: more than {2 * limit} bytes is over the "
                                         f"limit of {limit} ({setting})")
    text = dumps(value)
    if len(text) > limit:
        raise ApiError(413, "too_large",
                       f"{field}: {len(text)} bytes is over the limit of {limit} ({setting})")
    return text


def _task_options(body: SubmitTask | NewSchedule, prefix: str) -> dict[str, Any]:
    """The validated params and the lifecycle options (config defaults filled in)."""
    config = _dispatcher().config
    _check_size(f"{prefix}params", body.params, config.max_params_bytes, "MAX_PARAMS_BYTES")
    try:
        params = _dispatcher().registry.validate_task(body.task_type, body.params)
    except InvalidParams as exc:
        raise ApiError(400, "invalid_field", f"{prefix}{exc.field}: {exc.message}") from None
    return {
        "task_type": body.task_type, "params": params, "priority": body.priority,
        "max_attempts": body.max_attempts or config.max_attempts,
        "max_retries": (config.default_max_retries if body.max_retries is None
                        else body.max_retries),
        "retry_backoff": (config.default_retry_backoff if body.retry_backoff is None
                          else body.retry_backoff),
        "timeout_seconds": body.timeout_seconds,
    }


def _new_task(raw: Any, prefix: str, key: str | None) -> NewTask:
    body = parse(SubmitTask, raw, prefix)
    if body.split is not None:
        raise ApiError(400, "invalid_field",
                       f"{prefix}split: a split job is submitted on its own, not in a batch")
    return _validated_task(body, prefix, key)


def _validated_task(body: SubmitTask, prefix: str, key: str | None) -> NewTask:
    if body.run_at is not None and body.delay_seconds is not None:
        raise ApiError(400, "invalid_field",
                       f"{prefix}run_at: give run_at or delay_seconds, not both")
    if body.run_at is not None and body.run_at > time.time() + MAX_DELAY_SECONDS:
        raise ApiError(400, "invalid_field", f"{prefix}run_at: at most {MAX_DELAY_SECONDS} "
                       "seconds ahead")
    options = _task_options(body, prefix)
    request_hash = None if key is None else _request_hash(body, options["params"])
    return NewTask(options["task_type"], options["params"], options["priority"],
                   options["max_attempts"], key, options["max_retries"],
                   options["retry_backoff"], options["timeout_seconds"], body.run_at,
                   body.delay_seconds, principal().token_id, request_hash)


LIFECYCLE_FIELDS = ("max_retries", "retry_backoff", "timeout_seconds", "run_at",
                    "delay_seconds")


def _request_hash(body: SubmitTask, params: dict[str, Any], *extra: Any) -> str:
    """What an idempotency key stands for: the whole normalised submission (as sent, before
    config defaults), so a reuse that asks for something else (another delay, other retries)
    is a conflict. The lifecycle options join the hashed list only when given, so the hashes
    of submissions without them are what they were before those options existed."""
    what: list[Any] = [body.task_type, params, body.priority, body.max_attempts, *extra]
    options = {name: getattr(body, name) for name in LIFECYCLE_FIELDS
               if getattr(body, name) is not None}
    if options:
        what.append(options)
    return hashlib.sha256(dumps(what).encode()).hexdigest()


def _stored_key(key: str | None, item: int | None) -> str | None:
    """The key as stored: scoped to the caller's token and to a single task or a batch item."""
    return None if key is None else scoped_key(principal().token_id, item, key)


def _error_text(text: str) -> str:
    """A worker's error text, cut to MAX_ERROR_BYTES (UTF-8) with a note when longer."""
    limit = _dispatcher().config.max_error_bytes
    raw = text.encode()
    if len(raw) <= limit:
        return text
    note = f" ... [truncated: {len(raw)} bytes, MAX_ERROR_BYTES={limit}]"
    return raw[:max(0, limit - len(note))].decode(errors="ignore") + note


def _report(item: ResultItem) -> Report:
    """A posted result as the store takes it; an oversized one is marked refused."""
    if item.error is not None:
        return Report(item.task_id, item.attempt, None, _error_text(item.error),
                      final=not item.retry)
    limit = _dispatcher().config.max_result_bytes
    if json_longer_than(item.result, 2 * limit):
        reason = (f"result refused: more than {2 * limit} bytes is over the limit of {limit} "
                  "(MAX_RESULT_BYTES)")
        return Report(item.task_id, item.attempt, None, refused=reason)
    text = dumps(item.result)
    if len(text) > limit:
        reason = (f"result refused: {len(text)} bytes is over the limit of {limit} "
                  "(MAX_RESULT_BYTES)")
        return Report(item.task_id, item.attempt, None, refused=reason)
    return Report(item.task_id, item.attempt, text)


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 200:
        raise ApiError(400, "invalid_field", f"{IDEMPOTENCY_HEADER}: must be 1-200 characters")
    return key


def _pending_cap() -> int | None:
    """The pending-task cap of the caller: clients only (admins and auth off: none)."""
    caller = principal()
    if caller.token_id is None or caller.is_admin:
        return None
    return _dispatcher().config.max_pending_per_client


@api.post("/submit-task")
@roles(*CLIENTS)
def submit_task() -> tuple[Response, int]:
    """Submit one task, or a batch as {"tasks": [...]}."""
    _guard().check_rate(principal())
    body = _body()
    key = _idempotency_key()
    if "tasks" in body:
        return _submit_batch(body, key)
    if body.get("split") is not None:
        return _submit_group(parse(SubmitTask, body), key)
    new = _new_task(body, "", _stored_key(key, None))
    [(task_id, created)] = _dispatcher().submit([new], _pending_cap())
    if created:
        return jsonify(task_id=task_id, status=TaskStatus.PENDING.value), 201
    task = _dispatcher().get_task(task_id)
    return jsonify(task_id=task_id, status=task.status.value, duplicate=True), 200


def _submit_batch(body: dict[str, Any], key: str | None) -> tuple[Response, int]:
    batch = parse(SubmitBatch, body)
    limit = _dispatcher().config.max_batch_size
    if len(batch.tasks) > limit:
        raise ApiError(400, "invalid_field", f"tasks: at most {limit} tasks per batch")
    new = [_new_task(raw, f"tasks[{i}].", _stored_key(key, i))
           for i, raw in enumerate(batch.tasks)]
    created = _dispatcher().submit(new, _pending_cap())
    status = 201 if any(flag for _, flag in created) else 200
    return jsonify(task_ids=[task_id for task_id, _ in created], status="pending"), status


def _submit_group(body: SubmitTask, key: str | None) -> tuple[Response, int]:
    """A split job: the task validated whole, then cut into parts by its task type."""
    job = _validated_task(body, "", None)
    task_type = _dispatcher().registry.get(job.task_type)
    try:
        pieces = task_type.split_params(job.params, body.split or 1)
    except InvalidParams as exc:
        raise ApiError(400, "invalid_field", f"{exc.field}: {exc.message}") from None
    except Exception as exc:  # the task type's own code: its failure is not a server error
        current_app.logger.exception("split of a %s job failed", job.task_type)
        raise ApiError(400, "invalid_field", f"split: the task type {job.task_type!r} could "
                       f"not split these params ({type(exc).__name__}: {exc})") from None
    # Each part keeps the job's options (retries, backoff, timeout per attempt, run_at/delay)
    # and its owner.
    parts = [dataclasses.replace(job, params=piece) for piece in pieces]
    stored_key = request_hash = None
    if key is not None:  # scoped to the caller like a task's; a reuse must ask for the same
        stored_key = group_key(job.owner, key)
        request_hash = _request_hash(body, job.params, body.split)
    group_id, ids, created = _dispatcher().submit_group(
        job.task_type, job.params, parts, stored_key, request_hash, _pending_cap())
    answer = {"group_id": group_id, "task_ids": ids, "status": TaskStatus.PENDING.value}
    if created:
        return jsonify(answer), 201
    return jsonify({**answer, "status": _dispatcher().get_group(group_id)["status"],
                    "duplicate": True}), 200


def _require_group_owner(group_id: int) -> None:
    """403 unless the caller is an admin or the client that submitted the split job."""
    caller = principal()
    if not caller.is_admin:
        require_owner(caller, f"group {group_id}", _dispatcher().group_owner(group_id))


@api.get(f"/group/<{GROUP_ID}>")
@roles(*CLIENTS)
def group_status(group_id: int) -> tuple[Response, int]:
    """A split job: status, progress, parts by status, and the combined result when done."""
    _require_group_owner(group_id)
    return jsonify(_dispatcher().get_group(group_id)), 200


@api.post(f"/group/<{GROUP_ID}>/cancel")
@roles(*CLIENTS)
def cancel_group(group_id: int) -> tuple[Response, int]:
    """Cancel every unfinished part of a split job."""
    _require_group_owner(group_id)
    return jsonify(_dispatcher().cancel_group(group_id)), 200


@api.post("/get-task")
@roles(*WORKERS)
def get_task() -> tuple[Response | str, int]:
    """Lease pending work to a worker (long poll with "wait")."""
    body = parse(GetTask, _body())
    require_worker(principal(), body.worker_id)
    limit = 1 if body.max_tasks is None else body.max_tasks
    results = [_report(r) for r in body.results]
    leases, outcomes = _dispatcher().claim(
        body.worker_id, body.instance_id, limit, body.wait, results
    )
    if body.max_tasks is None and not results:  # the plain single-task form of the contract
        return (jsonify(task=leases[0].to_dict()), 200) if leases else ("", 204)
    return jsonify(tasks=[lease.to_dict() for lease in leases],
                   results=_outcomes(outcomes)), 200


@api.post("/heartbeat")
@roles(*WORKERS)
def heartbeat() -> tuple[Response, int]:
    """Record a worker's heartbeat; 409 listing the leases it no longer holds."""
    body = parse(Heartbeat, _body())
    require_worker(principal(), body.worker_id)
    held = [(t.task_id, t.attempt) for t in body.tasks]
    revoked = _dispatcher().heartbeat(body.worker_id, body.instance_id, held, body.stopping)
    if revoked:
        raise ApiError(
            409, "stale_lease", f"tasks {revoked} are no longer held by {body.worker_id}",
            {"revoked": revoked},
        )
    return jsonify(status="ok", revoked=[]), 200


@api.post("/checkpoint")
@roles(*WORKERS)
def checkpoint() -> tuple[Response, int]:
    """Save a task's resume state and renew its lease."""
    body = parse(SaveCheckpoint, _body())
    require_worker(principal(), body.worker_id)
    limit = _dispatcher().config.max_checkpoint_bytes
    _check_size("state", body.state, limit, "MAX_CHECKPOINT_BYTES")
    expires = _dispatcher().checkpoint(
        body.worker_id, body.task_id, body.attempt, body.state, body.progress
    )
    return jsonify(task_id=body.task_id, lease_expires_at=expires), 200


@api.post("/release-task")
@roles(*WORKERS)
def release_task() -> tuple[Response, int]:
    """Give a held task back to the queue (worker shutdown)."""
    body = parse(Release, _body())
    require_worker(principal(), body.worker_id)
    if body.state is not None:
        limit = _dispatcher().config.max_checkpoint_bytes
        _check_size("state", body.state, limit, "MAX_CHECKPOINT_BYTES")
    cause = ReclaimCause.RETURNED if body.reason == "unstarted" else ReclaimCause.RELEASED
    _dispatcher().release(
        body.worker_id, body.task_id, body.attempt, body.state, body.progress, cause
    )
    return jsonify(task_id=body.task_id, status=TaskStatus.PENDING.value), 200


@api.post("/submit-result")
@roles(*WORKERS)
def submit_result() -> tuple[Response, int]:
    """Record a task's result or error; a batch as {"results": [...]}."""
    data = _body()
    if "results" in data:
        batch = parse(SubmitResults, data)
        require_worker(principal(), batch.worker_id)
        outcomes = _dispatcher().complete(batch.worker_id, [_report(r) for r in batch.results])
        return jsonify(results=_outcomes(outcomes)), 200
    body = parse(SubmitResult, data)
    require_worker(principal(), body.worker_id)
    report = _report(body)
    [outcome] = _dispatcher().complete(body.worker_id, [report])
    if outcome.outcome is OutcomeKind.NOT_FOUND:
        raise ApiError(404, "not_found", f"task {body.task_id} does not exist")
    if outcome.outcome is OutcomeKind.REFUSED or (
            report.refused is not None and outcome.outcome is OutcomeKind.DUPLICATE):
        raise ApiError(413, "result_too_large", f"result: {report.refused}; the task failed")
    if outcome.outcome is OutcomeKind.STALE:
        raise ApiError(
            409, "stale_lease",
            f"task {body.task_id} attempt {body.attempt} from {body.worker_id} is not the "
            f"current lease (task is {outcome.status.value})",
        )
    return jsonify(task_id=body.task_id, status=outcome.status.value,
                   duplicate=outcome.outcome is OutcomeKind.DUPLICATE), 200


def _outcomes(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [{"task_id": o.task_id, "attempt": o.attempt, "outcome": o.outcome.value}
            for o in outcomes]


def _wait_arg() -> float:
    raw = request.args.get("wait", "0")
    if not _NUMBER.fullmatch(raw):  # float() alone would take " 5", "5_0", "inf"
        raise ApiError(400, "invalid_field", f"wait: must be a number of seconds, got {raw!r}")
    wait = float(raw)
    if not 0 <= wait <= 3600:
        raise ApiError(400, "invalid_field", "wait: must be between 0 and 3600 seconds")
    return wait


@api.get(f"/task/<{TASK_ID}>")
@roles(*CLIENTS)
def task_status(task_id: int) -> tuple[Response, int]:
    """A task's status, progress and result; ?wait=SECONDS answers when it finishes."""
    wait = _wait_arg()
    caller = principal()
    if not caller.is_admin:  # ownership first, so a stranger cannot even wait on it
        require_owner(caller, f"task {task_id}", _dispatcher().get_task(task_id).owner)
    return jsonify(_dispatcher().get_task(task_id, wait).to_dict()), 200


@api.post(f"/task/<{TASK_ID}>/cancel")
@roles(*CLIENTS)
def cancel_task(task_id: int) -> tuple[Response, int]:
    """Cancel a task that has not finished."""
    caller = principal()
    if not caller.is_admin:
        require_owner(caller, f"task {task_id}", _dispatcher().get_task(task_id).owner)
    return jsonify(_dispatcher().cancel(task_id).to_dict()), 200


@api.post(f"/task/<{TASK_ID}>/retry")
@roles(*CLIENTS)
def retry_task(task_id: int) -> tuple[Response, int]:
    """Put a failed or cancelled task back in the queue (409 for any other status); a client
    may retry only its own tasks."""
    caller = principal()
    if not caller.is_admin:
        require_owner(caller, f"task {task_id}", _dispatcher().get_task(task_id).owner)
    return jsonify(_dispatcher().retry(task_id).to_dict()), 200


@api.post("/schedules")
@roles(Role.ADMIN)  # schedules have no owner: an admin's tool
def add_schedule() -> tuple[Response, int]:
    """Submit a task every N seconds or on a cron expression (UTC), from now on."""
    body = parse(NewSchedule, _body())
    if (body.every_seconds is None) == (body.cron is None):
        raise ApiError(400, "invalid_field", "every_seconds: give exactly one of "
                       "every_seconds or cron")
    if body.cron is not None and (problem := cron_error(body.cron)) is not None:
        raise ApiError(400, "invalid_field", f"cron: {problem}")
    spec = {**_task_options(body, ""), "every_seconds": body.every_seconds, "cron": body.cron}
    return jsonify(_dispatcher().add_schedule(spec)), 201


@api.get("/schedules")
@roles(Role.ADMIN)  # schedules have no owner: an admin's tool
def list_schedules() -> tuple[Response, int]:
    """Every schedule with its next run."""
    return jsonify(schedules=_dispatcher().list_schedules()), 200


@api.delete(f"/schedules/<{TASK_ID.replace('task_id', 'schedule_id')}>")
@roles(Role.ADMIN)  # schedules have no owner: an admin's tool
def delete_schedule(schedule_id: int) -> tuple[Response, int]:
    """Stop a schedule; the tasks it submitted stay."""
    _dispatcher().delete_schedule(schedule_id)
    return jsonify(schedule_id=schedule_id, deleted=True), 200


def _list_view(task: Task, limit: int) -> dict[str, Any]:
    """A task as GET /tasks lists it: params, result or error longer than ``limit`` bytes
    (MAX_LIST_FIELD_BYTES) are left out and named in ``truncated`` (GET /task/<id> has them)."""
    view = task.to_dict()
    cut = [name for name in ("params", "result", "error")
           if view[name] is not None and len(dumps(view[name])) > limit]
    for name in cut:
        view[name] = None
    if cut:
        view["truncated"] = cut
    return view


@api.get("/tasks")
@roles(*CLIENTS)
def list_tasks() -> tuple[Response, int]:
    """A page of tasks, newest first: ?status=a,b&task_type=&created_after=&created_before=
    &limit=&cursor= ; the answer's ``next_cursor`` asks for the next page. A client token
    lists only its own tasks."""
    query = TaskQuery(statuses=_statuses_arg(), task_type=_task_type_arg(),
                      created_after=_time_arg("created_after"),
                      created_before=_time_arg("created_before"),
                      before_id=_cursor_arg(), limit=_limit_arg(), owner=_owner_filter())
    page = _dispatcher().list_tasks(query)
    cursor = None if page.next_id is None else encode_cursor(page.next_id)
    cap = _dispatcher().config.max_list_field_bytes
    return jsonify(tasks=[_list_view(t, cap) for t in page.tasks], next_cursor=cursor), 200


def _owner_filter() -> str | None:
    """A client lists only its own tasks; an admin (and everyone with auth off) all of them."""
    caller = principal()
    return None if caller.is_admin else caller.token_id


def _statuses_arg() -> tuple[TaskStatus, ...]:
    """``status``: one or several, repeated or comma-separated."""
    found: list[TaskStatus] = []
    for raw in request.args.getlist("status"):
        for name in filter(None, (part.strip() for part in raw.split(","))):
            try:
                status = TaskStatus(name)
            except ValueError:
                known = ", ".join(s.value for s in TaskStatus)
                raise ApiError(400, "invalid_field",
                               f"status: {name[:40]!r} is not one of {known}") from None
            if status not in found:
                found.append(status)
    return tuple(found)


def _task_type_arg() -> str | None:
    raw = request.args.get("task_type")
    if raw is None:
        return None
    if not _TASK_TYPE.fullmatch(raw):
        raise ApiError(400, "invalid_field", f"task_type: must match {_TASK_TYPE.pattern}")
    return raw


def _time_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not _NUMBER.fullmatch(raw):
        raise ApiError(400, "invalid_field",
                       f"{name}: must be Unix epoch seconds, got {raw[:40]!r}")
    return value


def _limit_arg() -> int:
    raw_limit = request.args.get("limit", "100")
    if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
        raise ApiError(400, "invalid_field", f"limit: must be 1-{MAX_LIST_LIMIT}")
    return int(raw_limit)


def encode_cursor(before_id: int) -> str:
    """The opaque ``next_cursor``: where the next page starts (exclusive), as text."""
    return base64.urlsafe_b64encode(f"t{before_id}".encode()).decode().rstrip("=")


def _cursor_arg() -> int | None:
    raw = request.args.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        if not _CURSOR.fullmatch(raw):
            raise ValueError
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
        if text[:1] != "t" or not _DIGITS_ANY.fullmatch(text[1:]):
            raise ValueError
        before_id = int(text[1:])
        if not 1 <= before_id <= MAX_TASK_ID + 1:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_field",
                       "cursor: not a cursor this server gave (use next_cursor as is)") from None
    return before_id


@api.get("/stats")
@roles(Role.CLIENT, Role.WORKER, Role.ADMIN)
def stats() -> tuple[Response, int]:
    """Counts, workers, throughput and reclaim counters."""
    return jsonify(_dispatcher().stats()), 200


@api.get("/metrics")
@roles(Role.CLIENT, Role.WORKER, Role.ADMIN)  # what /stats shows, in another format
def metrics() -> Response:
    """Prometheus metrics: the cluster's state read at scrape time, this process's counters."""
    return Response(_dispatcher().metrics.render(), mimetype=None,
                    content_type=CONTENT_TYPE_LATEST)


@api.get("/openapi.json")
@public  # the API's contract, no data; the /docs page fetches it without a token
def openapi_document() -> tuple[Response, int]:
    """This API's OpenAPI 3.1 document, generated from the models that validate requests."""
    document = current_app.extensions.get("taskqueue_openapi")
    if document is None:  # built once: the routes and the task types are fixed at start
        document = openapi.build(current_app, _dispatcher().registry,
                                 auth=_dispatcher().config.auth_enabled)
        current_app.extensions["taskqueue_openapi"] = document
    return jsonify(document), 200


@api.get("/docs")
@public  # a browser navigation carries no Bearer header; the page holds no data
def docs() -> Response:
    """A browsable page of the OpenAPI document (Swagger UI, served by this dispatcher)."""
    page = (SWAGGER_UI / "index.html").read_text(encoding="utf-8")
    root = request.script_root
    page = page.replace("{assets}", f"{root}/docs/assets").replace("{spec}",
                                                                   f"{root}/openapi.json")
    return Response(page, content_type="text/html; charset=utf-8")


@api.get("/docs/assets/<name>")
@public
def docs_asset(name: str) -> Response:
    """A file of the vendored Swagger UI."""
    if name not in DOC_ASSETS:
        raise ApiError(404, "not_found", f"name: no such file {name!r}")
    return send_file(SWAGGER_UI / name, mimetype=DOC_ASSETS[name], max_age=3600)


@api.get("/health")
@public
def health() -> tuple[Response, int]:
    """200 once the database answers (503 otherwise, via the error handler)."""
    return jsonify(_dispatcher().health()), 200


def register_request_metrics(app: Any) -> None:
    """Time every request and count it under its route rule (bounded labels, not raw paths)."""

    @app.before_request
    def _started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _answered(response: Response) -> Response:
        started = g.get("started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else None
            _dispatcher().metrics.on_request(rule, request.method, response.status_code,
                                             time.perf_counter() - started)
        return response


def register_error_handlers(app: Any) -> None:
    """Map every error to the JSON error body; tracebacks go to the log only."""
    from werkzeug.exceptions import HTTPException, MethodNotAllowed

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
        headers = {} if exc.retry_after is None else {
            "Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return jsonify(exc.to_dict()), exc.status, headers

    @app.errorhandler(IdempotencyConflict)
    def _conflict(exc: IdempotencyConflict) -> tuple[Response, int]:
        return jsonify(error={"code": "idempotency_conflict", "message": str(exc)}), 409

    @app.errorhandler(QuotaExceeded)
    def _quota(exc: QuotaExceeded) -> tuple[Response, int, dict[str, str]]:
        body = {"code": "too_many_pending", "message": str(exc)}
        return jsonify(error=body), 429, {"Retry-After": "10"}

    @app.errorhandler(InvalidCheckpoint)
    def _bad_checkpoint(exc: InvalidCheckpoint) -> tuple[Response, int]:
        message = f"{exc.field}: {exc.message}"
        return jsonify(error={"code": "invalid_checkpoint", "message": message}), 400

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> tuple[Response, int]:
        return jsonify(error={"code": "not_found", "message": str(exc)}), 404

    @app.errorhandler(StaleLease)
    def _stale(exc: StaleLease) -> tuple[Response, int]:
        return jsonify(error={"code": exc.code, "message": str(exc)}), 409

    @app.errorhandler(StorageUnavailable)
    def _unavailable(exc: StorageUnavailable) -> tuple[Response, int, dict[str, str]]:
        app.logger.warning("storage unavailable: %s", exc)
        _dispatcher().metrics.storage_errors.labels("request").inc()
        body = {"code": "storage_unavailable", "message": f"storage unavailable: {exc}"}
        return jsonify(error=body), 503, {"Retry-After": "1"}

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        body = {"code": code, "message": exc.description}
        return jsonify(error=body), exc.code or 500, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return jsonify(error={"code": "internal_error", "message": "internal error"}), 500
