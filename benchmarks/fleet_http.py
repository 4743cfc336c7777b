"""A minimal HTTP/1.1 keep-alive client on asyncio streams, to simulate hundreds of peers cheaply.

One :class:`HttpConnection` is one TCP connection used by one coroutine at a time, like one
``http.client`` connection of a worker: it connects on first use, stays open between
requests, and after a timeout or any error it is closed and reopened by the next request
(what ``shared.client.JsonConnection`` does). Requests are prepared once as bytes
(:func:`build_request`), since a simulated worker sends the same body again and again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

HEAD_LIMIT = 64 * 1024
"""Longest status line plus headers accepted (asyncio's default stream limit)."""


class ProtocolError(ConnectionError):
    """The answer was not HTTP/1.1 this client understands, or the server closed mid-answer."""


@dataclass(frozen=True)
class Answer:
    """A response: status, body bytes and the Retry-After header in seconds (if any)."""

    status: int
    body: bytes
    retry_after: float | None = None


def build_request(method: str, host: str, port: int, path: str, body: Any = None) -> bytes:
    """The bytes of one request; ``body`` (if not None) is sent as JSON."""
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode("ascii") + b"\r\n" + data


class HttpConnection:
    """One keep-alive connection to ``host:port``; :meth:`exchange` sends a prepared request."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def open(self, timeout: float) -> None:
        """Connect now unless connected (a server that closed an idle connection is noticed)."""
        if self._writer is not None and not self._writer.is_closing() and not (
                self._reader is not None and self._reader.at_eof()):
            return
        self.close()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port, limit=HEAD_LIMIT), timeout)
        self.connects += 1

    async def exchange(self, request: bytes, connect_timeout: float,
                       read_timeout: float) -> Answer:
        """Send a request and read its whole answer within the timeouts.

        Raises TimeoutError, OSError or ProtocolError; the connection is closed then, and
        the next call opens a new one.
        """
        try:
            await self.open(connect_timeout)
            async with asyncio.timeout(read_timeout):
                return await self._round_trip(request)
        except (TimeoutError, OSError, asyncio.CancelledError):
            self.close()
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc

    async def _round_trip(self, request: bytes) -> Answer:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        await self._writer.drain()
        status, headers = await self._read_head()
        while 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            status, headers = await self._read_head()
        body = await self._read_body(status, headers)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, body, _seconds(headers.get("retry-after")))

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        assert self._reader is not None
        lines = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"not an HTTP status line: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return int(parts[1]), headers

    async def _read_body(self, status: int, headers: dict[str, str]) -> bytes:
        assert self._reader is not None
        if status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        if "content-length" in headers:
            return await self._reader.readexactly(int(headers["content-length"]))
        headers["connection"] = "close"  # the body ends where the connection does
        return await self._reader.read()

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)
        while await self._reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then a blank line
            pass
        return b"".join(parts)

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _seconds(raw: str | None) -> float | None:
    try:
        return None if raw is None else max(0.0, float(raw))
    except ValueError:
        return None
