"""Small helpers shared by every entry point."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
JSON_FIELDS = {"levelname": "level", "name": "logger", "process": "pid"}
"""The standard fields of a JSON log line (after ``timestamp``, ISO 8601 in UTC), renamed."""


def configure_logging(level: str, name: str | None = None, log_format: str = "text") -> None:
    """Configure the root logger once for an entry point (stderr, one line per record).

    ``log_format="json"`` writes one JSON object per line: ``timestamp``, ``level``,
    ``logger``, ``pid``, ``message``, and whatever the call passed as ``extra=`` (the
    ``task_id``, ``worker_id`` and ``attempt`` of :func:`task_fields`).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_json_formatter() if log_format == "json"
                         else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if name:
        logging.getLogger(name).setLevel(level)


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    fields = "".join(f"{{{field}}}" for field in JSON_FIELDS) + "{message}"
    return JsonFormatter(fields, style="{", rename_fields=JSON_FIELDS,
                         json_ensure_ascii=False, timestamp=True)


def task_fields(task_id: int | None, worker_id: str | None,
                attempt: int | None = None) -> dict[str, Any]:
    """The ``extra=`` of a log line about one task: fields of their own in JSON logs."""
    return {"task_id": task_id, "worker_id": worker_id, "attempt": attempt}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for tests and analysis runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def split_urls(raw: str) -> tuple[str, ...]:
    """The base URLs of a comma-separated list, without trailing slashes; errors name a bad one."""
    urls = tuple(part.strip().rstrip("/") for part in raw.split(","))
    for position, url in enumerate(urls, 1):
        problem = _url_problem(url)
        if problem:
            raise ValueError(f"entry {position} ({url!r}) {problem}")
        if url in urls[:position - 1]:
            raise ValueError(f"entry {position} ({url!r}) is listed twice")
    return urls


def _url_problem(url: str) -> str | None:
    if not url:
        return "is empty"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "has a bad port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http(s)://host[:port][/path]"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None
