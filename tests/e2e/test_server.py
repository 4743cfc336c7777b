"""The dispatcher's server under connections that never finish a request."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import requests

from shared.cluster import LocalCluster, wait_until

HALF_OPEN = 200


def test_health_answers_within_a_second_while_200_requests_hang_half_open(
    cluster: LocalCluster,
) -> None:
    sockets = []
    try:
        for i in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
            # Some never send a byte; the others stop in the middle of their headers.
            if i % 2:
                sock.sendall(b"POST /submit-task HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            sockets.append(sock)
        started = time.monotonic()
        resp = requests.get(f"{cluster.url}/health", timeout=1.0)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
        assert time.monotonic() - started < 1.0
        view = cluster.stats()
        assert view["tasks"]["total"] == 0  # nothing half-sent was taken for a request
    finally:
        for sock in sockets:
            sock.close()


def test_sigterm_closes_idle_kept_alive_connections_at_once(cluster: LocalCluster) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=5)
    try:
        conn.request("GET", "/health")
        answer = conn.getresponse()
        assert answer.status == 200 and not answer.will_close
        answer.read()  # the connection is now idle, kept alive
        cluster.dispatcher.send_signal(signal.SIGTERM)
        # Not after the 1 s that requests in flight are given: nothing is in flight here.
        conn.sock.settimeout(0.8)
        assert conn.sock.recv(1) == b""
    finally:
        conn.close()
    assert cluster.dispatcher.wait(timeout=10) == 0


def test_sigterm_answers_a_waiting_long_poll_at_once(cluster: LocalCluster) -> None:
    answer: dict = {}
    poll = threading.Thread(target=lambda: answer.update(resp=requests.post(
        f"{cluster.url}/get-task", json={"worker_id": "w1", "instance_id": "i", "wait": 20},
        timeout=30), at=time.monotonic()))
    poll.start()
    wait_until(lambda: cluster.stats()["claims"]["waiting"] == 1, 10, message="the poll waits")
    stopped = time.monotonic()
    cluster.dispatcher.send_signal(signal.SIGTERM)
    poll.join(timeout=30)
    assert answer["resp"].status_code == 204  # nothing to do: the worker may leave
    assert answer["at"] - stopped < 0.8  # not after the 1 s that requests in flight are given
    assert cluster.dispatcher.wait(timeout=10) == 0
