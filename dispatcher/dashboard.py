"""The live dashboard: a static page (``dispatcher/static/``) and the JSON it polls.

The page is plain HTML, CSS and JavaScript served from this repository (no build step, nothing
from another host); it polls ``GET /dashboard/state`` once a second and calls the ordinary API
(``GET /task/<id>``, ``POST /task/<id>/cancel``...) for details and actions.

With credentials on, the page and its static files stay public (they hold no data, and a
browser's navigation carries no Bearer header); the JSON it polls shows every client's tasks,
so it is for admin tokens only (the page sends the token typed into its token field).
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory

from dispatcher.auth import Role, public, roles
from dispatcher.routes import MAX_TASK_ID, TASK_ID
from dispatcher.service import Dispatcher
from dispatcher.utils import ApiError

STATIC = Path(__file__).resolve().parent / "static"
MAX_EVENTS = 1000
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
"""Only this dispatcher's own files run on the page; it cannot be framed."""
_DIGITS = re.compile(r"[0-9]{1,19}")

dashboard = Blueprint("dashboard", __name__, static_folder=str(STATIC),
                      static_url_path="/dashboard/static")


def _dispatcher() -> Dispatcher:
    return current_app.extensions["taskqueue"]


@dashboard.get("/")
@dashboard.get("/dashboard")
@public
def page() -> Response:
    """The dashboard page."""
    response = send_from_directory(STATIC, "dashboard.html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@dashboard.get("/dashboard/state")
@roles(Role.ADMIN)
def state() -> tuple[Response, int]:
    """Everything the page shows, in one document (bounded reads; reused for half a second)."""
    response = jsonify(_dispatcher().dashboard_state())
    response.headers["Cache-Control"] = "no-store"
    return response, 200


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_field", f"{name}: must be an integer {low}-{high}")
    return int(raw)


@dashboard.get("/events")
@roles(Role.ADMIN)
def events() -> tuple[Response, int]:
    """Timeline events: ?after=<event_id> (oldest first), else the newest; ?limit, ?task_id."""
    after = _int_arg("after", None, 0, MAX_TASK_ID)
    limit = _int_arg("limit", 100, 1, MAX_EVENTS)
    task_id = _int_arg("task_id", None, 1, MAX_TASK_ID)
    found = _dispatcher().events(after, limit or 100, task_id)
    last = found[-1].event_id if found else after
    return jsonify(events=[event.to_dict() for event in found], last_event_id=last), 200


@dashboard.get(f"/task/<{TASK_ID}>/checkpoint")
@roles(Role.ADMIN)
def checkpoint(task_id: int) -> tuple[Response, int]:
    """The task's latest checkpoint (its resume state and progress), or null."""
    found = _dispatcher().latest_checkpoint(task_id)
    return jsonify(task_id=task_id, checkpoint=found.to_dict() if found else None), 200
