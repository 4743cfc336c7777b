"""Failover between dispatchers in shared.client, over real loopback sockets.

Small HTTP servers in this process stand in for dispatchers (each names itself in its answers);
a dead dispatcher is a port that was free a moment ago; a "swallower" reads a request and
hangs up without answering (the request may have been processed, the answer is lost).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.client import (
    Failover,
    JsonConnection,
    QueueClient,
    Unreachable,
)
from shared.utils import free_port
from worker.client import home_index


class FakeDispatcher:
    """An HTTP server answering every request with ``status`` and ``{"server": name}``."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name, self.status = name, 200
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self._connections: list[socket.socket] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,),
                                        daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the dispatcher does

            def setup(self) -> None:
                super().setup()
                fake._connections.append(self.connection)

            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else {}
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                status = 200 if self.path == "/health" else fake.status
                data = json.dumps({"server": fake.name, "task_id": 7,
                                   "task_ids": list(range(len(body.get("tasks", []))))}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def paths(self) -> list[str]:
        """The paths of the requests received, in order."""
        return [path for _, path, _, _ in self.requests]

    def stop(self) -> None:
        """Stop serving, free the port and cut open connections (as a killed process does)."""
        self._server.shutdown()
        self._server.server_close()
        for conn in self._connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join()


class Swallower:
    """Accepts connections, reads one request and hangs up without answering."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                self.received.append(conn.recv(65536))

    def stop(self) -> None:
        """Stop listening (the shutdown wakes the blocked accept)."""
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def fakes() -> Iterator[list[FakeDispatcher]]:
    made: list[FakeDispatcher] = []
    yield made
    for fake in made:
        fake.stop()


def dead_url() -> str:
    """The URL of a port nothing listens on (bound, closed, not reused)."""
    return f"http://127.0.0.1:{free_port()}"


def served_by(conn: JsonConnection) -> str:
    """Which fake answered one POST through ``conn``."""
    reply = conn.post("/heartbeat", {"worker_id": "w1"}, (1.0, 2.0))
    return reply.field("server")


def test_a_dead_dispatcher_is_skipped_within_the_call_and_logged_once(fakes, caplog) -> None:
    live = FakeDispatcher("live")
    fakes.append(live)
    dead = dead_url()
    conn = JsonConnection(Failover([dead, live.url], label="worker w1"))
    with caplog.at_level(logging.WARNING, logger="shared.client"):
        assert [served_by(conn) for _ in range(5)] == ["live"] * 5
    assert conn.base_url == live.url
    switches = [r.getMessage() for r in caplog.records]
    assert switches == [f"worker w1: dispatcher {dead} unreachable (ConnectionRefusedError), "
                        f"using {live.url}"]
    conn.close()


def test_with_every_dispatcher_down_nothing_was_sent(fakes) -> None:
    first, second = dead_url(), dead_url()
    with pytest.raises(Unreachable) as down:
        JsonConnection([first, second]).post("/heartbeat", {}, (1.0, 1.0))
    assert down.value.maybe_processed is False
    assert first in str(down.value) and second in str(down.value)


def test_a_lost_answer_is_not_resent_but_the_next_call_moves_on(fakes) -> None:
    swallower, live = Swallower(), FakeDispatcher("live")
    fakes.append(live)
    try:
        conn = JsonConnection([swallower.url, live.url])
        with pytest.raises(Unreachable) as lost:
            conn.post("/submit-result", {"task_id": 1, "attempt": 1}, (1.0, 2.0))
        assert lost.value.maybe_processed is True
        assert live.requests == [], "a request that may have been processed was sent again"
        assert served_by(conn) == "live" and len(swallower.received) == 1
    finally:
        swallower.stop()


@pytest.mark.parametrize("status", [404, 409, 503])
def test_an_http_answer_is_returned_never_sent_elsewhere(fakes, status: int) -> None:
    first, second = FakeDispatcher("first"), FakeDispatcher("second")
    fakes.extend([first, second])
    first.status = status
    conn = JsonConnection([first.url, second.url])
    reply = conn.post("/checkpoint", {"task_id": 1}, (1.0, 2.0))
    assert reply.status == status and reply.field("server") == "first"
    assert second.requests == []
    # 4xx answers keep calls where they are; after a 5xx the next call starts on the next one.
    assert served_by(conn) == ("second" if status >= 500 else "first")


def test_calls_go_back_home_once_it_answers_its_health_check(fakes) -> None:
    now = [0.0]
    home_port = free_port()
    other = FakeDispatcher("other")
    fakes.append(other)
    failover = Failover([f"http://127.0.0.1:{home_port}", other.url], failback_seconds=10,
                        clock=lambda: now[0])
    conn = JsonConnection(failover)
    assert served_by(conn) == "other"
    now[0] = 11.0  # home is checked again, but it is still down: the call stays on "other"
    assert served_by(conn) == "other"
    home = FakeDispatcher("home", port=home_port)
    fakes.append(home)
    now[0] = 15.0  # before the next check is due: no request to home
    assert served_by(conn) == "other" and home.requests == []
    now[0] = 21.5
    assert served_by(conn) == "home"
    assert home.paths() == ["/health", "/heartbeat"]
    assert [served_by(conn) for _ in range(3)] == ["home"] * 3
    conn.close()


def test_an_answer_from_before_a_switch_does_not_switch_back(caplog) -> None:
    now = [0.0]
    failover = Failover(["http://127.0.0.1:1", "http://127.0.0.1:2"], failback_seconds=10,
                        clock=lambda: now[0])
    failover.failed(0, "unreachable (ConnectionRefusedError)")
    failover.replied(1, 200)
    now[0] = 11.0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        failover.go_home()  # one thread's health check found home again
        failover.replied(1, 200)  # another thread's long poll, sent before, answers now
    assert failover.current_url == "http://127.0.0.1:1"
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "dispatcher http://127.0.0.1:1 answers again, back to it from http://127.0.0.1:2"]


def test_connections_sharing_a_failover_move_together(fakes) -> None:
    first, second = FakeDispatcher("first"), FakeDispatcher("second")
    fakes.extend([first, second])
    failover = Failover([first.url, second.url], failback_seconds=3600)
    main, heartbeat = JsonConnection(failover), JsonConnection(failover)
    assert served_by(main) == served_by(heartbeat) == "first"
    first.stop()
    fakes.remove(first)
    assert served_by(heartbeat) == "second"
    first_calls = len(second.requests)
    assert served_by(main) == "second" and len(second.requests) == first_calls + 1
    main.close()
    heartbeat.close()


def test_threads_sharing_a_connection_all_get_answers(fakes) -> None:
    live = FakeDispatcher("live")
    fakes.append(live)
    conn = JsonConnection([dead_url(), live.url], connections=4)
    answers: list[str] = []

    def call_many() -> None:
        answers.extend(served_by(conn) for _ in range(20))

    threads = [threading.Thread(target=call_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == ["live"] * 80
    conn.close()


def test_a_submission_whose_answer_was_lost_is_resent_once_with_the_same_key(fakes) -> None:
    swallower, live = Swallower(), FakeDispatcher("live")
    fakes.append(live)
    live.status = 201
    try:
        with QueueClient([swallower.url, live.url], timeout=2) as queue:
            assert queue.submit("noop") == 7
            first_key = _header(swallower.received[0], "Idempotency-Key")
            [(_, _, headers, _)] = live.requests
            assert first_key and headers["Idempotency-Key"] == first_key
            queue.submit("noop")
            assert live.requests[1][2]["Idempotency-Key"] != first_key, "a key per submission"
    finally:
        swallower.stop()


def test_batches_get_a_key_each_derived_from_one_key_per_call(fakes) -> None:
    live = FakeDispatcher("live")
    fakes.append(live)
    live.status = 201
    tasks = [{"task_type": "noop", "params": {}}] * 5
    with QueueClient(live.url) as queue:
        assert len(queue.submit_many(tasks, batch_size=2, idempotency_key="order-1")) == 5
        queue.submit_many(tasks, batch_size=2)
    keys = [headers["Idempotency-Key"] for _, _, headers, _ in live.requests]
    assert keys[:3] == ["order-1/0", "order-1/2", "order-1/4"]
    base = keys[3].removesuffix("/0")
    assert keys[3:] == [f"{base}/0", f"{base}/2", f"{base}/4"] and len(base) == 32


def test_workers_are_spread_over_the_list_and_keep_their_home() -> None:
    homes = [home_index(f"worker-{i}", 3) for i in range(30)]
    assert set(homes) == {0, 1, 2}
    assert homes == [home_index(f"worker-{i}", 3) for i in range(30)]
    assert home_index("worker-1", 1) == 0


def _header(raw: bytes, name: str) -> str | None:
    for line in raw.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
