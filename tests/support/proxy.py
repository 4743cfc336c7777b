"""A small TCP proxy that can black-hole traffic: a network partition without root.

While partitioned, bytes in both directions are read and dropped (nothing is refused, nothing
is answered: exactly what a cut cable looks like to both ends), and new connections are held
silently. ``heal()`` forwards again; connections cut by the partition stay dead, so clients
time out and reconnect, as they would on a real network.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")


@dataclass(frozen=True)
class SeenResponse:
    """One HTTP response the proxy relayed to the client: when (monotonic) and its status."""

    at: float
    status: int


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``partition()`` / ``heal()`` cut and restore it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every partition; a connection lives in one epoch
        self._partitioned = False
        self._mute_replies = False
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.responses: list[SeenResponse] = []
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------

    @property
    def partitioned(self) -> bool:
        """True while traffic is black-holed."""
        return self._partitioned

    def partition(self) -> None:
        """Drop every byte from now on, on existing and new connections."""
        with self._lock:
            self._partitioned = True
            self._epoch += 1

    def drop_replies(self) -> None:
        """Forward requests but swallow every answer (the server acts, the client never hears)."""
        with self._lock:
            self._mute_replies = True
            self._epoch += 1

    def heal(self) -> None:
        """Forward new connections again (connections cut by the partition stay dead)."""
        with self._lock:
            self._partitioned = False
            self._mute_replies = False

    def responses_since(self, since: float) -> list[SeenResponse]:
        """HTTP responses relayed to clients at or after monotonic time ``since``."""
        with self._lock:
            return [r for r in self.responses if r.at >= since]

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop at once
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        self._thread.join(timeout=5)

    def __enter__(self) -> "BlackholeProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- relaying -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
            partitioned, epoch = self._partitioned, self._epoch
        # (with drop_replies, new connections are forwarded and their answers swallowed)
        if partitioned:  # held silently: read and drop until the client gives up
            return self._drain(client)
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            return _close(client)
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
        threading.Thread(target=self._pump, args=(client, upstream, epoch, False),
                         daemon=True).start()
        self._pump(upstream, client, epoch, True)

    def _cut(self, epoch: int, replies: bool) -> bool:
        if replies and self._mute_replies:
            return True
        return self._partitioned or self._epoch != epoch

    def _pump(self, src: socket.socket, dst: socket.socket, epoch: int, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if self._cut(epoch, replies):
                    continue  # black-holed: swallowed, never answered
                if replies and (match := _STATUS_LINE.match(data)):
                    with self._lock:
                        self.responses.append(SeenResponse(time.monotonic(), int(match[1])))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def _drain(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            _close(sock)


def _close(sock: socket.socket) -> None:
    # shutdown() first: close() alone leaves a socket that another thread is blocked reading
    # open, so its peer would only notice at its own timeout.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
