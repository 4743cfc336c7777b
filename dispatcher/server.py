"""The HTTP server of the dispatcher: gevent's WSGI server, tuned for many small JSON calls.

Every connection is a greenlet. Per connection: TCP_NODELAY (a large body is written after
the head, and Nagle would hold it back until the client's delayed ACK, ~40 ms);
a read timeout (an idle or half-open connection is closed after IDLE_SECONDS); a deadline for
the request line and headers (a client that trickles them cannot hold a connection open).
A stopping server closes kept-alive connections that wait for their next request at once;
only requests in flight get the stop timeout. Request headers are split into name and value
directly: the standard library's parser goes through the e-mail package and measured 14% of
the CPU of a small request. A small response goes out in one write, head and body together.
"""

from __future__ import annotations

import logging
import socket
from http import client
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
"""A connection that sends nothing for this long is closed (idle keep-alive, half-open)."""
HEADER_SECONDS = 10.0
"""The request line and headers must arrive within this long."""
MAX_HEADERS = 100
MAX_HEADER_LINE = 65536
ONE_WRITE_BYTES = 65536
"""A response body up to this size goes out in the same write as the head."""


class _Headers(client.HTTPMessage):
    """The headers object pywsgi expects (its ``OldMessage`` API), filled without a parser."""

    status = ""

    def getheader(self, name: str, default: Any = None) -> Any:
        """The old ``mimetools`` accessor pywsgi calls."""
        return self.get(name, default)

    @property
    def headers(self) -> Any:
        """Raw header lines, as pywsgi iterates them."""
        for key, value in self._headers:  # type: ignore[attr-defined]
            yield f"{key}: {value}\r\n"

    @property
    def typeheader(self) -> Any:
        """The content type, as pywsgi reads it."""
        return self.get("content-type")


def read_headers(fp: Any) -> _Headers:
    """Read header lines up to the blank line; what ``http.client.parse_headers`` gives pywsgi.

    A line folded onto the next (obsolete in HTTP/1.1) continues the previous value; too many
    headers or too long a line mark the message invalid (``status``), like the parser's.
    """
    message = _Headers()
    fields: list[tuple[str, str]] = []
    while True:
        line = fp.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE or len(fields) > MAX_HEADERS:
            message.status = "Line too long" if len(line) > MAX_HEADER_LINE else "Too many headers"
            break
        if line in (b"\r\n", b"\n", b""):
            break
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            message.status = "Invalid header line"
            break
        fields.append((name, value.strip()))
    message._headers = fields  # type: ignore[attr-defined]
    return message


class _Handler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler with a deadline for the request head and the direct header reader."""

    requests_served = 0

    def MessageClass(self, fp: Any, *args: Any) -> _Headers:  # noqa: N802 - pywsgi's name
        return read_headers(fp)

    def read_requestline(self) -> Any:
        keep_alive = self.requests_served > 0
        if keep_alive and self.server.stopping:
            return None  # a stopping server takes no further request on a kept-alive connection
        current = gevent.getcurrent()
        if keep_alive:
            self.server.idle.add(current)
        try:
            with gevent.Timeout(HEADER_SECONDS, False):
                return super().read_requestline()
            return None  # the deadline passed: pywsgi closes the connection
        finally:
            self.server.idle.discard(current)

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()
        self.requests_served += 1
        return result

    def _write_with_headers(self, data: Any) -> None:
        """Send the status line, headers and a small body in one write (pywsgi sends the head
        and the body separately: two system calls and often two wake-ups of the client)."""
        if len(data) > ONE_WRITE_BYTES:
            super()._write_with_headers(data)
            return
        self.headers_sent = True
        self.finalize_headers()
        head = _head(self.status, self.response_headers)
        if self.response_use_chunked:  # decided by finalize_headers: pywsgi frames the body
            self._sendall(head)
            self._write(data)
        else:
            self._sendall(head + data)

    def read_request(self, raw_requestline: Any) -> Any:
        with gevent.Timeout(HEADER_SECONDS, False):
            return super().read_request(raw_requestline)
        raise client.HTTPException("request headers took too long")


def _head(status: bytes, headers: list[tuple[bytes, bytes]]) -> bytearray:
    """An HTTP/1.1 response head: status line, header lines, blank line."""
    head = bytearray(b"HTTP/1.1 ")
    head += status
    head += b"\r\n"
    for name, value in headers:
        head += name
        head += b": "
        head += value
        head += b"\r\n"
    head += b"\r\n"
    return head


class Server(WSGIServer):  # type: ignore[misc]
    """The WSGI server with the per-connection settings above."""

    handler_class = _Handler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.idle: set[gevent.Greenlet] = set()
        """Handlers of kept-alive connections waiting for their next request."""

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; close idle kept-alive connections at once (HTTP lets a server close
        them at any time), and give requests in flight up to ``timeout`` seconds."""
        self.stopping = True
        gevent.killall(list(self.idle), block=False)
        super().stop(timeout)

    def handle(self, sock: Any, address: Any) -> None:
        sock.settimeout(IDLE_SECONDS)  # each read or write; a waiting long poll does neither
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def make_server(app: Any, host: str, port: int, max_connections: int) -> Server:
    """A server for ``app`` on ``host:port``, serving at most ``max_connections`` at once."""
    return Server((host, port), app, spawn=Pool(max_connections), log=None,
                  error_log=_GeventErrors())


class _GeventErrors:
    """gevent's error log (a file-like object) into our logger."""

    def write(self, text: str) -> None:
        if text.strip():
            log.warning("server: %s", text.strip())

    def flush(self) -> None:
        pass
