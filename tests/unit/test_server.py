"""The dispatcher's HTTP server pieces that are ours: the header reader."""

from __future__ import annotations

import io
from http import client

import pytest

from dispatcher.server import MAX_HEADERS, read_headers

SAMPLES = [
    b"Host: localhost:5000\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"host: a\r\nX-Dup: 1\r\nX-Dup: 2\r\nAuthorization: Bearer tq_x_y\r\n\r\nbody",
    b"Host: a\r\nX-Long: one\r\n  two\r\n\tthree\r\n\r\n",
    b"Host: a\n\n",
    b"\r\n",
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_headers_read_as_the_standard_parser_reads_them(raw: bytes) -> None:
    ours, stdlib = read_headers(io.BytesIO(raw)), client.parse_headers(io.BytesIO(raw))
    assert ours.status == ""
    assert [(k, " ".join(v.split())) for k, v in ours.items()] == \
        [(k, " ".join(v.split())) for k, v in stdlib.items()]
    assert ours.get("x-dup") == stdlib.get("x-dup") and ours.get_all("X-Dup") == \
        stdlib.get_all("X-Dup")
    assert ours.typeheader == stdlib.get("content-type")


def test_the_body_after_the_headers_is_left_unread() -> None:
    stream = io.BytesIO(SAMPLES[1])
    read_headers(stream)
    assert stream.read() == b"body"


@pytest.mark.parametrize(("raw", "status"), [
    (b"Host: a\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n", "Line too long"),
    (b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 2)) + b"\r\n", "Too many headers"),
    (b"no colon here\r\n\r\n", "Invalid header line"),
    (b"Bad Name : v\r\n\r\n", "Invalid header line"),
])
def test_malformed_headers_mark_the_message_invalid(raw: bytes, status: str) -> None:
    assert read_headers(io.BytesIO(raw)).status == status
