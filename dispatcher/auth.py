"""Credentials and roles: bearer tokens stored as hashes, and who may call which route.

A token reads ``tq_<12 hex id>_<43 character secret>``. The database keeps its id, role,
optional worker binding and the SHA-256 of its secret (never the secret), so every dispatcher
on a shared database knows every token. A dispatcher caches what it read about a token for
TOKEN_CACHE_SECONDS: a revocation takes effect on every dispatcher within that time.

Every route declares the roles that may call it with :func:`roles` (or :func:`public`); the
one check in :func:`authorize` runs before every request, and a route that declares nothing
is for admins only. Resource checks (whose task or split job, which worker) are
:func:`require_owner` and :func:`require_worker`, called by the routes that touch tasks, split
jobs and leases.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dispatcher.utils import ApiError

F = TypeVar("F", bound=Callable[..., Any])

TOKEN_PATTERN = re.compile(r"tq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
CACHE_MAX_ENTRIES = 10_000
"""Cached token look-ups kept at most (unknown ids included), so guessing cannot fill memory."""


class Role(str, enum.Enum):
    """What a token may do."""

    CLIENT = "client"  # submit tasks, read and cancel its own
    WORKER = "worker"  # claim, heartbeat, checkpoint, release, post results
    ADMIN = "admin"  # everything, every client's tasks


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id, role and worker binding (None when auth is off)."""

    token_id: str | None
    role: Role
    worker_binding: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins (and everyone when auth is off) see and touch everything."""
        return self.role is Role.ADMIN

    def may_act_as(self, worker_id: str) -> bool:
        """Whether this caller may speak for ``worker_id`` (its binding; ``x-*`` a prefix)."""
        binding = self.worker_binding
        if self.is_admin or binding is None:
            return True
        if binding.endswith("*"):
            return worker_id.startswith(binding[:-1])
        return hmac.compare_digest(worker_id, binding)


UNCHECKED = Principal(None, Role.ADMIN)
"""The caller when auth is off: everything is allowed, as without credentials at all."""


@dataclass(frozen=True)
class NewToken:
    """A freshly made credential: ``text`` is shown once, only ``secret_hash`` is stored."""

    token_id: str
    text: str
    secret_hash: str


def new_token() -> NewToken:
    """A random token (48 bits of id, 256 bits of secret from :mod:`secrets`)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, f"tq_{token_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    """The stored form of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def roles(*allowed: Role) -> Callable[[F], F]:
    """Declare which roles may call a route (checked by :func:`authorize`)."""

    def mark(view: F) -> F:
        view.allowed_roles = frozenset(allowed)  # type: ignore[attr-defined]
        return view

    return mark


def public(view: F) -> F:
    """Declare a route open to anyone, without credentials (``/health``)."""
    view.allowed_roles = None  # type: ignore[attr-defined]
    return view


def declared_roles(view: Any) -> frozenset[Role] | None:
    """The roles a view declared; admins only when it declared nothing."""
    return getattr(view, "allowed_roles", frozenset({Role.ADMIN}))


def is_declared(view: Any) -> bool:
    """Whether a view declared its roles (a test checks every route does)."""
    return hasattr(view, "allowed_roles")


def is_static(endpoint: str | None) -> bool:
    """Flask's (or a blueprint's) packaged static files: public, like ``/health``."""
    return endpoint is not None and (endpoint == "static" or endpoint.endswith(".static"))


class TokenCache:
    """Token look-ups, each kept ``seconds`` (a revocation takes effect within that)."""

    def __init__(self, lookup: Callable[[str], dict[str, Any] | None], seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup, self._seconds, self._clock = lookup, seconds, clock
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def principal(self, header: str | None) -> Principal:
        """The caller an ``Authorization`` header names; 401 when missing or not valid."""
        if not header:
            raise ApiError(401, "unauthorized",
                           "credentials required: send Authorization: Bearer <token>")
        scheme, _, text = header.partition(" ")
        match = TOKEN_PATTERN.fullmatch(text.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise ApiError(401, "unauthorized", "Authorization: not a valid bearer token")
        token_id, secret = match.groups()
        row = self._row(token_id)
        # The hash is compared in constant time even for an unknown id.
        stored = row["secret_hash"] if row is not None else "0" * 64
        valid = hmac.compare_digest(hash_secret(secret), stored)
        if row is None or not valid or row["revoked_at"] is not None:
            raise ApiError(401, "unauthorized", "Authorization: unknown or revoked token")
        return Principal(token_id, Role(row["role"]), row["worker_id"])

    def _row(self, token_id: str) -> dict[str, Any] | None:
        now = self._clock()
        with self._lock:
            cached = self._rows.get(token_id)
        if cached is not None and now - cached[0] < self._seconds:
            return cached[1]
        row = self._lookup(token_id)
        with self._lock:
            if len(self._rows) >= CACHE_MAX_ENTRIES:
                self._rows.clear()
            self._rows[token_id] = (now, row)
        return row


def authorize(principal: Principal, view: Any) -> None:
    """403 unless the caller's role is one the route declared."""
    allowed = declared_roles(view)
    if allowed is None or principal.role in allowed:
        return
    names = ", ".join(sorted(role.value for role in allowed))
    raise ApiError(403, "forbidden",
                   f"a {principal.role.value} token may not do this (needs: {names})")


def require_worker(principal: Principal, worker_id: str) -> None:
    """403 unless the caller may speak for ``worker_id`` (its token's binding)."""
    if not principal.may_act_as(worker_id):
        raise ApiError(403, "forbidden",
                       f"worker_id: this token is bound to {principal.worker_binding!r}, "
                       f"not {worker_id!r}")


def require_owner(principal: Principal, what: str, owner: str | None) -> None:
    """403 unless the caller is an admin or the client that submitted ``what`` (a task or a
    split job, e.g. ``"task 7"``)."""
    if principal.is_admin or (owner is not None and owner == principal.token_id):
        return
    raise ApiError(403, "forbidden", f"{what} belongs to another client")
