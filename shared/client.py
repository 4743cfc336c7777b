"""The Python client of the dispatcher's REST API: submit tasks, wait for results.

    from shared.client import QueueClient

    with QueueClient("http://127.0.0.1:5000") as queue:
        task_id = queue.submit("primes", {"limit": 1_000_000})
        print(queue.result(task_id, timeout=60))  # the result dict; TaskFailed if it failed

``add_task.py``, the analysis tools, the benchmarks and the worker (through
:class:`JsonConnection`) use it. Given several dispatcher URLs (``"http://a:5000,http://b:5000"``,
dispatchers sharing one database), it moves to the next one while one is unreachable and
comes back later (:class:`Failover`; the rules are in docs/protocol.md).

It speaks HTTP/1.1 with the standard library's ``http.client`` over keep-alive connections:
on this project's small JSON calls the client's own CPU time per call measured 0.17 ms with
it, 0.32 ms through urllib3 and about 0.6 ms through requests, and in an idle round trip
(submit, then wait for the result) the client is on the critical path twice.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from shared.utils import split_urls

log = logging.getLogger(__name__)

FINISHED = ("completed", "failed", "cancelled")
GROUP_FINISHED = FINISHED
"""A split job is finished when all its parts completed, or one failed or was cancelled."""
SUBMIT_BATCH = 1000
"""Tasks per POST /submit-task when submitting many (the dispatcher takes up to MAX_BATCH_SIZE)."""
LONG_POLL_SECONDS = 10.0
"""One GET /task/<id>?wait= asks for at most this long (the dispatcher caps waits at 30 s)."""
FAILBACK_SECONDS = 10.0
"""After a failover, how long calls stay away from the home dispatcher before trying it again."""
PROBE_SECONDS = 0.5
"""Connect and read timeout of that retry (GET /health): a home still down delays a call little."""

IDEMPOTENCY_HEADER = "Idempotency-Key"

Timeout = tuple[float, float]  # (connect, read) seconds


class ClientError(Exception):
    """Base of the errors :class:`QueueClient` raises."""


class Unreachable(ClientError):
    """No dispatcher could be reached, or the one asked did not answer in time.

    ``maybe_processed`` is False when no request left this process (no dispatcher of the
    list accepted a connection), True when one was sent and its answer lost: it may have
    been acted on.
    """

    def __init__(self, message: str, maybe_processed: bool = True) -> None:
        super().__init__(message)
        self.maybe_processed = maybe_processed


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
        """True for answers that mean "try again later": 5xx, 429, and 401/403 (credentials
        can be fixed, and a worker restarted with a good token delivers its cached results;
        dropping them over a credentials problem would lose finished work)."""
        return self.status >= 500 or self.status in (401, 403, 429)

    def field(self, name: str, default: Any = None) -> Any:
        """One top-level field of a JSON object body."""
        return self.body.get(name, default) if isinstance(self.body, dict) else default


_JSON_HEADERS = {"Content-Type": "application/json"}


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


class Failover:
    """Which dispatcher of a list calls go to: the home one, the next while it is unreachable.

    Every dispatcher of a list can answer any request (they share one database), so a call
    that cannot connect tries the next one; a call whose answer was lost, or that got a 5xx,
    makes the next call start on the next one. Once away from home, one call every
    ``failback_seconds`` asks home's ``/health`` first and goes back there if it answers
    (a status under 500).
    Thread-safe: a worker's main loop and heartbeat thread share one, so they move together
    and each switch is logged once.
    """

    def __init__(self, urls: str | Sequence[str], home: int = 0, label: str = "client",
                 failback_seconds: float = FAILBACK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.urls = split_urls(urls if isinstance(urls, str) else ",".join(urls))
        self.home = home % len(self.urls)
        self.label = label
        self._failback, self._clock = failback_seconds, clock
        self._lock = threading.Lock()
        self._current = self._answered = self.home
        self._current_answers = False  # a call has had an answer from the current one
        self._problems: dict[int, str] = {}
        self._home_again_at = 0.0

    @property
    def current_url(self) -> str:
        """The dispatcher the next call starts on (unless it tries home first)."""
        with self._lock:
            return self.urls[self._current]

    def plan(self) -> tuple[list[int], bool]:
        """The indexes one call may try, in order; True when it should check home first."""
        with self._lock:
            count = len(self.urls)
            order = [(self._current + step) % count for step in range(count)]
            now = self._clock()
            if self._current == self.home or now < self._home_again_at:
                return order, False
            self._home_again_at = now + self._failback  # one call per interval checks home
            return order, True

    def failed(self, index: int, problem: str) -> None:
        """A call to ``index`` failed: calls that started there start on the next one."""
        with self._lock:
            self._problems[index] = problem
            if self._current != index:
                return
            self._current = (index + 1) % len(self.urls)
            self._current_answers = False
            if index == self.home:
                self._home_again_at = self._clock() + self._failback

    def go_home(self) -> None:
        """Home answered its health check: calls start there again."""
        with self._lock:
            self._current, self._current_answers = self.home, True
            previous, self._answered = self._answered, self.home
            self._problems.pop(self.home, None)
        if previous != self.home:
            log.warning("%s: dispatcher %s answers again, back to it from %s", self.label,
                        self.urls[self.home], self.urls[previous])

    def replied(self, index: int, status: int) -> None:
        """``index`` answered with ``status``; after a 5xx the next call starts on the next one.

        An answer from a call that left before another call switched dispatchers (a long poll,
        say) does not switch back, once a call has heard from the current one.
        """
        if status >= 500:
            return self.failed(index, f"answered HTTP {status}")
        with self._lock:
            if index != self._current and self._current_answers:
                return
            self._current, self._current_answers = index, True
            previous, self._answered = self._answered, index
            problem = self._problems.pop(previous, "unavailable")
        if index == previous:
            return
        if index == self.home:
            log.warning("%s: dispatcher %s answers again, back to it from %s", self.label,
                        self.urls[index], self.urls[previous])
        else:
            log.warning("%s: dispatcher %s %s, using %s", self.label, self.urls[previous],
                        problem, self.urls[index])


@dataclass(frozen=True)
class _Endpoint:
    """Where one base URL points: scheme, host, port and path prefix."""

    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "_Endpoint":
        """Split a base URL checked by :func:`split_urls`."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        return cls(https, parts.hostname or "", parts.port or (443 if https else 80), parts.path)

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection, connected; OSError when it cannot be (nothing was sent)."""
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=timeout)
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise
        return conn


class JsonConnection:
    """JSON calls to the dispatchers of a list over keep-alive connections (thread-safe).

    Each call borrows an idle connection to its dispatcher (or opens one) and returns it
    afterwards, so concurrent callers never share one. A connection that the server closed
    while idle is noticed before reuse and replaced. A dispatcher that cannot be connected to
    (nothing was sent) is skipped for the next one of the list, each tried at most once per
    call. A call never re-sends a request that may have been processed: it raises
    :class:`Unreachable` and the caller decides; :class:`Failover` says where calls go.
    """

    def __init__(self, urls: str | Sequence[str] | Failover, connections: int = 1,
                 token: str = "") -> None:
        self.failover = urls if isinstance(urls, Failover) else Failover(urls)
        # Sent with every request (DISPATCHER_TOKEN); never logged.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._endpoints = [_Endpoint.parse(url) for url in self.failover.urls]
        self._idle: list[list[http.client.HTTPConnection]] = [[] for _ in self._endpoints]
        self._keep = max(1, connections)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The base URL of the dispatcher the next call starts on."""
        return self.failover.current_url

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
        all_headers = {**_JSON_HEADERS, **self._auth, **(headers or {})}
        order, check_home = self.failover.plan()
        home = self.failover.home
        if check_home and self._healthy(home, min(timeout[0], PROBE_SECONDS)):
            self.failover.go_home()
            order = [home, *(index for index in order if index != home)]
        failures = []
        for index in order:
            try:
                conn = self._borrow(index, timeout[0])
            except OSError as exc:
                self.failover.failed(index, f"unreachable ({type(exc).__name__})")
                failures.append(f"{type(exc).__name__} connecting to {self.failover.urls[index]}")
                continue
            return self._exchange(index, conn, method, path, data, all_headers, timeout[1])
        raise Unreachable("; ".join(failures), maybe_processed=False)

    def _healthy(self, index: int, seconds: float) -> bool:
        """True if ``index`` answers GET /health within ``seconds``, without a 5xx (fail-back)."""
        try:
            conn = self._borrow(index, seconds)
        except OSError as exc:
            self.failover.failed(index, f"unreachable ({type(exc).__name__})")
            return False
        try:
            reply = self._exchange(index, conn, "GET", "/health", None, dict(_JSON_HEADERS),
                                   seconds)
        except Unreachable:
            return False
        return reply.status < 500

    def _exchange(self, index: int, conn: http.client.HTTPConnection, method: str, path: str,
                  data: bytes | None, headers: dict[str, str], read_timeout: float) -> Reply:
        try:
            conn.sock.settimeout(read_timeout)  # type: ignore[union-attr]
            conn.request(method, self._endpoints[index].prefix + path, body=data,
                         headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self.failover.failed(index, f"unreachable ({type(exc).__name__})")
            raise Unreachable(f"{type(exc).__name__} on {method} {path} "
                              f"to {self.failover.urls[index]}") from exc
        if resp.will_close:
            conn.close()
        else:
            self._give_back(index, conn)
        self.failover.replied(index, resp.status)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Reply(resp.status, parsed, _retry_after(resp.headers))

    def _borrow(self, index: int, connect_timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle[index]
            while idle:
                conn = idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
        return self._endpoints[index].connect(connect_timeout)

    def _give_back(self, index: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle[index]) < self._keep:
                self._idle[index].append(conn)
                return
        conn.close()

    def post(self, path: str, body: Any, timeout: Timeout) -> Reply:
        """POST ``body`` as JSON."""
        return self.call("POST", path, body, timeout)

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, [[] for _ in self._endpoints]
        for conns in idle:
            for conn in conns:
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

    ``url`` is one dispatcher base URL or several (a sequence, or one comma-separated string)
    that share one database: calls start on the first and move to the next while one is
    unreachable (a :class:`Failover` instead chooses the home and the fail-back interval).
    Reads and submissions whose answer was lost are asked once more, on the next dispatcher:
    reads change nothing, and every submission carries an ``Idempotency-Key`` (made here
    unless given), so the dispatcher answers a repeated one with the task ids it already
    stored instead of storing the tasks twice.

    Errors: :class:`Unreachable` when no dispatcher can be reached or an answer was lost
    twice, and :class:`RequestRefused` (with the dispatcher's error code and message) when
    it refuses.
    """

    def __init__(self, url: str | Sequence[str] | Failover, timeout: float = 30.0,
                 connections: int = 4, token: str = "") -> None:
        self._http = JsonConnection(url, connections, token)
        self._timeout: Timeout = (min(timeout, 5.0), timeout)

    @property
    def url(self) -> str:
        """The base URL of the dispatcher the next call starts on."""
        return self._http.base_url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every dispatcher base URL this client may use, in order."""
        return self._http.failover.urls

    def _ok(self, method: str, path: str, body: Any = None, *, read_timeout: float | None = None,
            headers: Mapping[str, str] | None = None, repeatable: bool = False) -> Any:
        timeout = self._timeout if read_timeout is None else (self._timeout[0], read_timeout)
        try:
            reply = self._http.call(method, path, body, timeout, headers)
        except Unreachable as lost:
            if not (repeatable and lost.maybe_processed):
                raise
            # The answer was lost; ask the next dispatcher. Only for requests that get the
            # same answer twice: reads, and submissions under one Idempotency-Key.
            try:
                reply = self._http.call(method, path, body, timeout, headers)
            except Unreachable as again:
                raise Unreachable(f"{lost}; again: {again}") from again
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
        **options: Any,
    ) -> int:
        """Submit one task; return its id (a submission repeated with its key: the same id).

        ``options`` are the other submission fields (max_retries, retry_backoff,
        timeout_seconds, run_at, delay_seconds); None values are left out.
        """
        body = _task_body(task_type, params, priority, max_attempts)
        body.update({k: v for k, v in options.items() if v is not None})
        headers = {IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()}
        return int(self._ok("POST", "/submit-task", body, headers=headers,
                            repeatable=True)["task_id"])

    def submit_split(
        self,
        task_type: str,
        params: Mapping[str, Any] | None,
        parts: int,
        *,
        priority: int = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Submit a split job of at most ``parts`` parts; ``{"group_id", "task_ids", ...}``.

        ``options`` are the fields every part takes (max_retries, retry_backoff,
        timeout_seconds, run_at, delay_seconds); None values are left out.
        """
        body = {**_task_body(task_type, params, priority, max_attempts), "split": parts}
        body.update({k: v for k, v in options.items() if v is not None})
        headers = {IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()}
        return dict(self._ok("POST", "/submit-task", body, headers=headers, repeatable=True))

    def group(self, group_id: int) -> dict[str, Any]:
        """GET /group/<id>: a split job's status, progress, parts and combined result."""
        return dict(self._ok("GET", f"/group/{int(group_id)}", repeatable=True))

    def wait_group(self, group_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Long-poll a split job's parts until it is finished; its view. Raise WaitTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.group(group_id)
            if view["status"] in GROUP_FINISHED:
                return view
            part = next(p for p in view["tasks"] if p["status"] not in FINISHED)
            left = LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"group {group_id} still {view['status']} after {timeout}s")
            self.task(part["task_id"], wait=min(left, LONG_POLL_SECONDS))

    def cancel_group(self, group_id: int) -> dict[str, Any]:
        """Cancel a split job's unfinished parts; its view."""
        return dict(self._ok("POST", f"/group/{int(group_id)}/cancel"))

    def task_page(self, **query: Any) -> dict[str, Any]:
        """GET /tasks with filters (status, task_type, created_after, created_before, limit,
        cursor); ``{"tasks": [...], "next_cursor": ...}``."""
        args = {k: v for k, v in query.items() if v is not None}
        return dict(self._ok("GET", "/tasks?" + urlencode(args), repeatable=True))

    def submit_many(self, tasks: Iterable[Mapping[str, Any]], batch_size: int = SUBMIT_BATCH,
                    *, idempotency_key: str | None = None) -> list[int]:
        """Submit task bodies (``{"task_type", "params", ...}``) in batches; return the ids.

        Each batch goes under the key ``KEY/FIRST`` (FIRST: the index of its first task), so
        the same tasks submitted again under the same key and batch size get the same ids.
        """
        pending = list(tasks)
        key = idempotency_key or new_idempotency_key()
        ids: list[int] = []
        for start in range(0, len(pending), batch_size):
            answer = self._ok("POST", "/submit-task", {"tasks": pending[start:start + batch_size]},
                              headers={IDEMPOTENCY_HEADER: f"{key}/{start}"}, repeatable=True)
            ids.extend(int(task_id) for task_id in answer["task_ids"])
        return ids

    def task(self, task_id: int, wait: float = 0.0) -> dict[str, Any]:
        """GET /task/<id>; with ``wait``, the dispatcher answers once it finishes or wait ends."""
        path = f"/task/{int(task_id)}"
        if wait > 0:
            path += "?" + urlencode({"wait": round(wait, 3)})
        return dict(self._ok("GET", path, read_timeout=self._timeout[1] + wait, repeatable=True))

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

    def retry(self, task_id: int) -> dict[str, Any]:
        """Put a failed or cancelled task back in the queue; its view."""
        return dict(self._ok("POST", f"/task/{int(task_id)}/retry"))

    def add_schedule(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /schedules (``every_seconds`` or ``cron`` plus the task's fields); its view."""
        return dict(self._ok("POST", "/schedules", dict(body)))

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule."""
        return list(self._ok("GET", "/schedules", repeatable=True)["schedules"])

    def delete_schedule(self, schedule_id: int) -> None:
        """Stop a schedule."""
        self._ok("DELETE", f"/schedules/{int(schedule_id)}")

    def tasks(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """GET /tasks: the newest tasks' views, of one status if given."""
        query = {"limit": limit, **({"status": status} if status else {})}
        return list(self._ok("GET", "/tasks?" + urlencode(query), repeatable=True)["tasks"])

    def stats(self) -> dict[str, Any]:
        """The /stats document."""
        return dict(self._ok("GET", "/stats", repeatable=True))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> "QueueClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_idempotency_key() -> str:
    """A fresh random ``Idempotency-Key`` (32 hex digits)."""
    return uuid.uuid4().hex


def _task_body(task_type: str, params: Mapping[str, Any] | None, priority: int,
               max_attempts: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"task_type": task_type, "params": dict(params or {}),
                            "priority": priority}
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    return body
