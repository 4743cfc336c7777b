"""The Python client of the dispatcher's REST API: submit tasks, wait for results.

    from shared.client import QueueClient

    with QueueClient("http://127.0.0.1:5000") as queue:
        task_id = queue.submit("primes", {"limit": 1_000_000})
        print(queue.result(task_id, timeout=60))  # the result dict; TaskFailed if it failed

``add_task.py``, the benchmarks and the worker (through :class:`JsonConnection`) use it.
It speaks HTTP/1.1 with the standard library's ``http.client`` over keep-alive connections:
on this project's small JSON calls the client's own CPU time per call measured 0.17 ms with
it, 0.32 ms through urllib3 and about 0.6 ms through requests, and in an idle round trip
(submit, then wait for the result) the client is on the critical path twice.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

FINISHED = ("completed", "failed", "cancelled")
SUBMIT_BATCH = 1000
"""Tasks per POST /submit-task when submitting many (the dispatcher takes up to MAX_BATCH_SIZE)."""
LONG_POLL_SECONDS = 10.0
"""One GET /task/<id>?wait= asks for at most this long (the dispatcher caps waits at 30 s)."""

Timeout = tuple[float, float]  # (connect, read) seconds


class ClientError(Exception):
    """Base of the errors :class:`QueueClient` raises."""


class Unreachable(ClientError):
    """The dispatcher could not be reached, or did not answer in time."""


class RequestRefused(ClientError):
    """The dispatcher answered 4xx/5xx; ``code`` and ``message`` come from its JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class TaskFailed(ClientError):
    """The awaited task ended failed or cancelled; ``view`` is its GET /task/<id> document."""

    def __init__(self, view: dict[str, Any]) -> None:
        super().__init__(f"task {view.get('task_id')} {view.get('status')}: {view.get('error')}")
        self.view = view


class WaitTimeout(ClientError):
    """The awaited task had not finished when the timeout ran out."""


@dataclass(frozen=True)
class Reply:
    """A dispatcher answer: status, parsed JSON body (or None) and Retry-After seconds."""

    status: int
    body: Any
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """True for answers that mean "try again later" (5xx, 429)."""
        return self.status >= 500 or self.status == 429

    def field(self, name: str, default: Any = None) -> Any:
        """One top-level field of a JSON object body."""
        return self.body.get(name, default) if isinstance(self.body, dict) else default


_JSON_HEADERS = {"Content-Type": "application/json"}


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


class JsonConnection:
    """JSON calls to one dispatcher over keep-alive connections (thread-safe).

    Each call borrows an idle connection (or opens one) and returns it afterwards, so
    concurrent callers never share one. A connection that the server closed while idle is
    noticed before reuse and replaced; a call never silently retries, because a POST that
    may have been processed must be retried by the caller, not here.
    """

    def __init__(self, base_url: str, connections: int = 1) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"dispatcher URL must be http://host[:port][/path], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self._prefix = parts.path
        self._idle: list[http.client.HTTPConnection] = []
        self._keep = max(1, connections)
        self._lock = threading.Lock()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: Timeout = (2.0, 30.0),
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; raise :class:`Unreachable` on connection errors and timeouts."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        all_headers = {**_JSON_HEADERS, **headers} if headers else dict(_JSON_HEADERS)
        conn = self._borrow(timeout[0])
        try:
            conn.sock.settimeout(timeout[1])  # type: ignore[union-attr]
            conn.request(method, self._prefix + path, body=data, headers=all_headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable(f"{type(exc).__name__} on {method} {path}") from exc
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Reply(resp.status, parsed, _retry_after(resp.headers))

    def _borrow(self, connect_timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
        conn = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise Unreachable(f"{type(exc).__name__} connecting to {self.base_url}") from exc
        return conn

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, path: str, body: Any, timeout: Timeout) -> Reply:
        """POST ``body`` as JSON."""
        return self.call("POST", path, body, timeout)

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True if an idle connection was closed by the server (readable means EOF or junk)."""
    if conn.sock is None:
        return True
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class QueueClient:
    """Submit tasks, read and await them, cancel them, read /stats.

    Errors: :class:`Unreachable` when the dispatcher cannot be reached, and
    :class:`RequestRefused` (with the dispatcher's error code and message) when it refuses.
    """

    def __init__(self, url: str, timeout: float = 30.0, connections: int = 4) -> None:
        self._http = JsonConnection(url, connections)
        self._timeout: Timeout = (min(timeout, 5.0), timeout)

    @property
    def url(self) -> str:
        """The dispatcher's base URL."""
        return self._http.base_url

    def _ok(self, method: str, path: str, body: Any = None, *, read_timeout: float | None = None,
            headers: Mapping[str, str] | None = None) -> Any:
        timeout = self._timeout if read_timeout is None else (self._timeout[0], read_timeout)
        reply = self._http.call(method, path, body, timeout, headers)
        if reply.status >= 400:
            error = reply.field("error")
            if isinstance(error, dict):
                raise RequestRefused(reply.status, str(error.get("code")), str(error.get("message")))
            raise RequestRefused(reply.status, "http_error", str(reply.body)[:200])
        return reply.body

    def submit(
        self,
        task_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Submit one task; return its id (with a key, a retry returns the first id)."""
        body = _task_body(task_type, params, priority, max_attempts)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return int(self._ok("POST", "/submit-task", body, headers=headers)["task_id"])

    def submit_many(self, tasks: Iterable[Mapping[str, Any]],
                    batch_size: int = SUBMIT_BATCH) -> list[int]:
        """Submit task bodies (``{"task_type", "params", ...}``) in batches; return the ids."""
        pending = list(tasks)
        ids: list[int] = []
        for start in range(0, len(pending), batch_size):
            answer = self._ok("POST", "/submit-task", {"tasks": pending[start:start + batch_size]})
            ids.extend(int(task_id) for task_id in answer["task_ids"])
        return ids

    def task(self, task_id: int, wait: float = 0.0) -> dict[str, Any]:
        """GET /task/<id>; with ``wait``, the dispatcher answers once it finishes or wait ends."""
        path = f"/task/{int(task_id)}"
        if wait > 0:
            path += "?" + urlencode({"wait": round(wait, 3)})
        return dict(self._ok("GET", path, read_timeout=self._timeout[1] + wait))

    def wait(self, task_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Long-poll until the task finishes; its view. Raise :class:`WaitTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            view = self.task(task_id, wait=max(0.0, min(left, LONG_POLL_SECONDS)))
            if view["status"] in FINISHED:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {task_id} still {view['status']} after {timeout}s")

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """Wait for the task; its result, or :class:`TaskFailed` if it failed or was cancelled."""
        view = self.wait(task_id, timeout)
        if view["status"] != "completed":
            raise TaskFailed(view)
        return view["result"]

    def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel an unfinished task; its view."""
        return dict(self._ok("POST", f"/task/{int(task_id)}/cancel"))

    def stats(self) -> dict[str, Any]:
        """The /stats document."""
        return dict(self._ok("GET", "/stats"))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> "QueueClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _task_body(task_type: str, params: Mapping[str, Any] | None, priority: int,
               max_attempts: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"task_type": task_type, "params": dict(params or {}),
                            "priority": priority}
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    return body
