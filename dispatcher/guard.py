"""Checks every request passes before its route runs: what a browser or a proxy cannot forge.

In order: the Host header (DNS rebinding), the Origin (cross-site requests, CORS), the body's
content type (a form or text/plain post, which browsers send without a preflight), a proxied
request to a dispatcher without credentials, the caller's token and the route's roles
(:mod:`dispatcher.auth`), then a share of the in-flight body budget. Refusals are the API's
JSON errors.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from dispatcher.auth import (
    UNCHECKED,
    Principal,
    TokenCache,
    authorize,
    declared_roles,
    is_static,
)
from dispatcher.utils import ApiError
from shared.config import Config

log = logging.getLogger(__name__)

PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key"


class BodyBudget:
    """The request bytes being received at once, across connections, held under a budget.

    A request reserves its Content-Length (or the maximum when it has none) before its body
    is read; one that would go over is answered 503 with Retry-After, unread.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False when the budget cannot hold them now."""
        with self._lock:
            if self.in_use and self.in_use + size > self.budget:
                return False
            self.in_use += size
            return True

    def give_back(self, size: int) -> None:
        """Return a reservation."""
        with self._lock:
            self.in_use -= size


class Guard:
    """The per-request checks of one app, configured once."""

    def __init__(self, config: Config, tokens: TokenCache) -> None:
        self.config = config
        self.tokens = tokens
        self.budget = BodyBudget(config.body_budget_bytes)
        self.hosts = {"localhost", config.dispatcher_host.lower()} | config.allowed_host_names
        self.origins = config.cors_origin_list
        self.rates = parse_many(config.rate_limit)
        self.limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def check_rate(self, caller: Principal) -> None:
        """429 when the caller's token submitted more than RATE_LIMIT allows (none when auth
        is off). Counted per dispatcher: N dispatchers allow up to N times the rate."""
        if caller.token_id is None:
            return
        for rate in self.rates:
            if not self.limiter.hit(rate, "submit", caller.token_id):
                stats = self.limiter.get_window_stats(rate, "submit", caller.token_id)
                raise ApiError(429, "rate_limited",
                               f"more than {rate} submissions from this token (RATE_LIMIT)",
                               retry_after=max(1.0, stats.reset_time - time.time()))

    def install(self, app: Flask) -> None:
        """Run the checks before every request of ``app``; CORS headers after."""
        app.before_request(self.before)
        app.after_request(self.after)
        app.teardown_request(self.teardown)

    # -- before -------------------------------------------------------------------------

    def before(self) -> Response | None:
        """Refuse the request, or let it through with ``g.principal`` set."""
        self._check_host()
        self._check_origin()
        view = current_app.view_functions.get(request.endpoint or "")
        if request.method == "OPTIONS":
            return None  # a CORS preflight, answered by Flask (headers added in after)
        if request.method == "POST" and request.mimetype != "application/json":
            raise ApiError(415, "unsupported_media_type",
                           "Content-Type: must be application/json")
        g.principal = self._principal(view)
        if request.method == "POST":
            self._reserve_body()
        return None

    def _check_host(self) -> None:
        name = _host_name(request.host)
        if "*" in self.hosts or name in self.hosts or _is_ip(name):
            return
        raise ApiError(403, "bad_host",
                       f"Host: {name!r} is not a name of this dispatcher (ALLOWED_HOSTS)")

    def _check_origin(self) -> None:
        origin = request.headers.get("Origin")
        if origin is None or origin.rstrip("/") in self.origins:
            return
        if urlsplit(origin).netloc.lower() == request.host.lower():
            return  # same origin (a page served by this dispatcher)
        raise ApiError(403, "bad_origin",
                       f"Origin: {origin!r} may not call this API (CORS_ORIGINS)")

    def _principal(self, view: Any) -> Principal:
        if is_static(request.endpoint) or (view is not None and declared_roles(view) is None):
            return UNCHECKED  # a public route (/health, static files)
        if not self.config.auth_enabled:
            proxied = [h for h in PROXY_HEADERS if h in request.headers]
            if proxied:
                raise ApiError(
                    403, "proxied_without_credentials",
                    f"{proxied[0]}: this request came through a proxy, and this dispatcher "
                    "runs without credentials (set AUTH_REQUIRED=true and use tokens)")
            return UNCHECKED
        principal = self.tokens.principal(request.headers.get("Authorization"))
        if view is not None:
            authorize(principal, view)
        return principal

    def _reserve_body(self) -> None:
        size = request.content_length
        size = self.config.max_request_bytes if size is None else size
        size = min(size, self.config.max_request_bytes)  # more is refused (413) unread
        if not self.budget.take(size):
            raise ApiError(503, "busy",
                           "too many request bodies are being received; retry shortly "
                           "(BODY_BUDGET_BYTES)", retry_after=1)
        g.body_reserved = size

    # -- after --------------------------------------------------------------------------

    def after(self, response: Response) -> Response:
        """Add CORS headers for an allowed cross-origin caller (and nothing otherwise)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        return response

    def teardown(self, _exc: BaseException | None) -> None:
        """Give back the request's share of the body budget."""
        size = g.pop("body_reserved", None)
        if size is not None:
            self.budget.give_back(size)


def principal() -> Principal:
    """The caller of the current request (set by the guard)."""
    return g.get("principal", UNCHECKED)


def _host_name(host: str) -> str:
    """The name part of a Host header (without the port; an IPv6 literal without brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    """An address literal: a browser that sends one is not being rebound through DNS."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
