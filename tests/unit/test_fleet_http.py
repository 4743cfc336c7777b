"""The fleet simulators' HTTP client against a scripted loopback server: the answer forms the
dispatcher's server does not send today (chunked, Connection: close) and the timeout path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from benchmarks.fleet_http import HttpConnection, ProtocolError, build_request

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    return await reader.readexactly(length)


def _exchange(script: Script, requests: int, read_timeout: float = 2.0) -> tuple[list, int]:
    """Serve ``script`` per connection; send ``requests`` POSTs on one client; the answers."""

    async def run() -> tuple[list, int]:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = HttpConnection("127.0.0.1", port)
        request = build_request("POST", "127.0.0.1", port, "/x", {"n": 1})
        answers: list = []
        try:
            for _ in range(requests):
                try:
                    answers.append(await conn.exchange(request, 1.0, read_timeout))
                except (TimeoutError, ProtocolError) as exc:
                    answers.append(type(exc).__name__)
        finally:
            conn.close()
            server.close()
        return answers, conn.connects

    return asyncio.run(run())


async def _keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while not reader.at_eof():
        try:
            body = await _read_request(reader)
        except asyncio.IncompleteReadError:  # the client closed the connection
            break
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    writer.close()


async def _chunked_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                 b"\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(1.0)
    writer.close()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"SSH-2.0-nope\r\n\r\n")
    await writer.drain()
    writer.close()


def test_keep_alive_reuses_one_connection_and_sends_the_json_body() -> None:
    answers, connects = _exchange(_keep_alive, requests=3)
    assert [(a.status, a.body) for a in answers] == [(200, b'{"n":1}')] * 3
    assert connects == 1


def test_chunked_body_is_joined_and_connection_close_reconnects() -> None:
    answers, connects = _exchange(_chunked_then_close, requests=2)
    assert [(a.status, a.body) for a in answers] == [(201, b"abcde")] * 2
    assert connects == 2


def test_timeout_closes_the_connection_and_the_next_request_reconnects() -> None:
    answers, connects = _exchange(_silent, requests=2, read_timeout=0.2)
    assert answers == ["TimeoutError", "TimeoutError"]
    assert connects == 2


def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    answers, _ = _exchange(_garbage, requests=1)
    assert answers == ["ProtocolError"]
