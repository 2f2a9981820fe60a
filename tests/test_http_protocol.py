"""The httptools protocol's head limit, against a real uvicorn server on a local port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
import uvicorn.protocols.http.auto as auto
from uvicorn.protocols.http.h11_impl import H11Protocol

from service import http_protocol
from service.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol


async def echo_length(scope, receive, send) -> None:
    """Answers 200 with the body's length: what a request that got through would see."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = b"%d" % len(body)
    headers = [(b"content-length", b"%d" % len(reply))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo_length, http=BoundedHttpToolsProtocol, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def exchange(port: int, *chunks: bytes, pause_s: float = 0.0) -> bytes:
    """Sends `chunks` on one connection, then reads until the server closes it or goes
    quiet; returns what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            for chunk in chunks:
                conn.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: its answer is still in our buffer
        conn.settimeout(1.0)
        answer = b""
        try:
            while data := conn.recv(65536):
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def request(headers: bytes = b"", body: bytes = b"ok", close: bool = True) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\n" + headers + connection
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def test_an_ordinary_request_is_served(port: int) -> None:
    answer = exchange(port, request(body=b"hello"))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"5")


def test_a_head_just_under_the_limit_is_served(port: int) -> None:
    padding = b"X-Padding: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n"
    assert exchange(port, request(padding)).startswith(b"HTTP/1.1 200")


def test_a_1_mb_header_is_refused_with_431_and_the_connection_closed(port: int) -> None:
    big = b"X-Padding: " + b"a" * (1 << 20) + b"\r\n"
    answer = exchange(port, request(big, close=False))
    assert answer.startswith(b"HTTP/1.1 431")
    assert answer.count(b"HTTP/1.1") == 1  # nothing served after it: the connection closed


def test_ten_thousand_small_headers_are_refused(port: int) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    assert exchange(port, request(many)).startswith(b"HTTP/1.1 431")


def test_a_head_that_never_ends_is_refused_before_it_ends(port: int) -> None:
    """Memory stays bounded: the refusal comes while the header is still arriving, in
    pieces, long before its end (which is never sent)."""
    start = b"POST / HTTP/1.1\r\nHost: x\r\nX-Padding: "
    pieces = [start] + [b"a" * 1024] * 64  # 64 KiB of one header value, no end of line
    answer = exchange(port, *pieces, pause_s=0.005)
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_large_body_sent_with_its_head_is_not_counted_as_head(port: int) -> None:
    body = b"b" * (4 * MAX_HEAD_BYTES)
    answer = exchange(port, request(body=body))  # one sendall: head and body together
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"%d" % len(body))


def test_keep_alive_requests_each_get_their_own_budget(port: int) -> None:
    """Heads of 3/4 of the limit, five on one connection: each is within the limit."""
    padding = b"X-Padding: " + b"a" * (3 * MAX_HEAD_BYTES // 4) + b"\r\n"
    chunks = [request(padding, close=False) for _ in range(4)] + [request(padding)]
    answer = exchange(port, *chunks, pause_s=0.05)
    assert answer.count(b"HTTP/1.1 200") == 5


@pytest.fixture
def restore_auto() -> Iterator[None]:
    before = auto.AutoHTTPProtocol
    yield
    auto.AutoHTTPProtocol = before


def protocol_for_auto() -> type:
    config = uvicorn.Config(echo_length, http="auto", lifespan="off")
    config.load()
    return config.http_protocol_class


@pytest.mark.usefixtures("restore_auto")
def test_install_makes_uvicorns_auto_protocol_the_bounded_one() -> None:
    assert http_protocol.install({}) == "httptools"
    assert protocol_for_auto() is BoundedHttpToolsProtocol


@pytest.mark.usefixtures("restore_auto")
def test_the_setting_keeps_h11() -> None:
    assert http_protocol.install({"SMALLCLS_HTTP_PARSER": "H11"}) == "h11"
    assert protocol_for_auto() is H11Protocol


def test_an_unknown_parser_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SMALLCLS_HTTP_PARSER must be one of"):
        http_protocol.chosen_parser({"SMALLCLS_HTTP_PARSER": "picohttp"})
