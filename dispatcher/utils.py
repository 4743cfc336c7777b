"""Small helpers of the dispatcher: the API error type, request parsing, wake-ups."""

from __future__ import annotations

import re
import threading
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, extra: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.retry_after = retry_after
        """Seconds the client should wait before trying again (the Retry-After header)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"code": self.code, "message": self.message}, **self.extra}


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def nesting_at_most(raw: bytes, max_depth: int) -> bool:
    """True when the JSON text ``raw`` nests at most ``max_depth`` containers deep.

    Scans the text at C speed (strings dropped, then innermost bracket pairs removed once per
    level), so a large body is not walked object by object in Python, which would hold up
    every other request of the process for seconds. Only meaningful for valid JSON.
    """
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = _INNERMOST.sub(b"", brackets)
    return not brackets


def json_body(request: Request, max_depth: int) -> dict[str, Any]:
    """The request's JSON object; 400 naming the problem when it is not one.

    Nesting deeper than ``max_depth`` is refused (the parser itself would recurse ~1,000
    levels deep before failing, and everything downstream walks the value again).
    """
    try:
        data = request.get_json(silent=True, force=True)
    except RecursionError:
        raise ApiError(400, "too_deep", f"body: nested deeper than {max_depth} levels") from None
    if data is None:
        raise ApiError(400, "invalid_json", "request body must be valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    if nesting_at_most(request.get_data(cache=True), max_depth):
        return data
    too_deep = deeper_than(data, max_depth)  # names the path (the body is deep, not wide)
    if too_deep is not None:
        raise ApiError(400, "too_deep", f"{too_deep}: nested deeper than {max_depth} levels")
    return data


def deeper_than(value: Any, max_depth: int) -> str | None:
    """The path of a container nested deeper than ``max_depth`` in ``value``, or None.

    Iterative (an explicit stack), so it cannot itself run out of recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            return path or "body"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, (dict, list)):
                child_path = f"{path}[{key}]" if isinstance(key, int) else (
                    f"{path}.{key}" if path else str(key))
                stack.append((child, child_path, depth + 1))
    return None


def json_longer_than(value: Any, limit: int) -> bool:
    """True when the JSON text of ``value`` is certainly longer than ``limit`` characters.

    Counts a lower bound (brackets, separators, one character per scalar, a string's length)
    and stops as soon as it passes ``limit``: a huge value is refused after looking at about
    ``limit`` items, instead of being serialised whole (seconds for a 16 MiB list of numbers,
    during which the process serves nothing else). False means "measure it exactly".
    """
    size = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            size += 2 + 3 * len(node) + sum(len(key) for key in node) if len(node) <= limit \
                else limit + 1
            if size <= limit:
                stack.extend(node.values())
        elif isinstance(node, list):
            size += 1 + len(node)
            if size <= limit:
                stack.extend(node)
        else:
            size += len(node) + 2 if isinstance(node, str) else 1
        if size > limit:
            return True
    return False


def parse(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` with a pydantic model; 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "is required"
        elif first["type"] == "extra_forbidden":
            message = "is not a known field"
        raise ApiError(400, "invalid_field", f"{field}: {message}") from None


class Notifier:
    """Wakes waiting request threads when something changed (new tasks, finished tasks).

    A generation counter makes wake-ups impossible to miss: read ``generation`` before
    looking, then ``wait(generation, ...)`` returns at once if anything happened since.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        """The number of notifications so far."""
        return self._generation

    def notify(self, count: int | None = None) -> None:
        """Wake ``count`` waiters, or every waiter.

        Waking fewer spares the others a useless look (a new task is taken by one claim);
        a waiter not woken still sees the new generation when its own wait ends.
        """
        with self._cond:
            self._generation += 1
            if count is None:
                self._cond.notify_all()
            else:
                self._cond.notify(count)

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until a notification after ``seen`` or the timeout; True if notified."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, timeout)
