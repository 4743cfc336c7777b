"""The worker's side of the dispatcher's HTTP API: a JSON client, its replies and retry policy.

:class:`DispatcherClient` turns connection errors and timeouts into :class:`Unreachable`;
:class:`OutageLog` keeps an outage to two log lines; :class:`Backoff` paces the retries.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3

log = logging.getLogger(__name__)

Timeout = tuple[float, float]


class Backoff:
    """Exponential backoff with jitter, capped; :meth:`reset` after a success."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self._base, self._cap, self._rng = base, cap, rng
        self.failures = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        """Seconds to wait after one more failure (at least ``at_least``, never above the cap)."""
        ceiling = min(self._cap, self._base * 2 ** min(self.failures, 30))
        self.failures += 1
        # "Equal jitter": half fixed, half random, so retries spread without collapsing to 0.
        delay = ceiling * (0.5 + 0.5 * self._rng())
        return min(self._cap, max(delay, at_least))

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0


class Unreachable(Exception):
    """The dispatcher could not be reached, or did not answer in time."""


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


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


class DispatcherClient:
    """JSON POSTs to the dispatcher over one keep-alive connection (one client per thread).

    urllib3 directly rather than requests: a worker makes thousands of small calls, and
    requests' per-call session, cookie and proxy handling cost more than the call itself.
    """

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._pool = urllib3.connection_from_url(self._base_url, maxsize=1, block=False)
        self._prefix = urllib3.util.parse_url(self._base_url).path or ""

    def post(self, path: str, body: dict[str, Any], timeout: Timeout) -> Reply:
        """POST ``body``; raise :class:`Unreachable` on connection errors and timeouts."""
        data = json.dumps(body, allow_nan=False).encode()
        try:
            resp = self._pool.urlopen(
                "POST", self._prefix + path, body=data, headers=_JSON_HEADERS, retries=False,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"{type(exc).__name__} on {path}") from exc
        try:
            body_json = json.loads(resp.data) if resp.data else None
        except ValueError:
            body_json = None
        return Reply(resp.status, body_json, _retry_after(resp.headers))

    def close(self) -> None:
        """Close the pooled connection."""
        self._pool.close()


_JSON_HEADERS = {"Content-Type": "application/json"}


class OutageLog:
    """Logs a dispatcher outage once when it starts and once when it ends, not per failure."""

    def __init__(self, worker_id: str, channel: str) -> None:
        self._worker_id, self._channel = worker_id, channel
        self.failures = 0

    def failed(self, detail: str) -> None:
        """Note one failed call."""
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "worker %s: dispatcher unavailable for %s (%s); will keep retrying",
                self._worker_id, self._channel, detail)

    def ok(self) -> None:
        """Note a successful call; logs the end of an outage."""
        if self.failures:
            log.info("worker %s: dispatcher reachable again for %s after %d failed calls",
                     self._worker_id, self._channel, self.failures)
        self.failures = 0
