"""Small helpers shared by every entry point."""

from __future__ import annotations

import logging
import socket
import sys
from urllib.parse import urlsplit

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str, name: str | None = None) -> None:
    """Configure the root logger once for an entry point (stderr, one line per record)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if name:
        logging.getLogger(name).setLevel(level)


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
