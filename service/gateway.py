"""ASGI middleware in front of every route: bearer-token auth, the request-body size limit and
the time a client may take to send its body.

Auth and the declared size act before the body is read: an unauthenticated or oversized
request costs no parsing. A body that trickles in (slowloris) is cut off at the deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a token: orchestrators probe these without credentials (`/health` is Text
# Embeddings Inference's probe, public there too).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/health"})
# Text Embeddings Inference's routes (service/tei.py) answer errors in its body,
# `{"error", "error_type"}`, the gateway's included. TEI answers 401 with no body at all;
# "Unauthorized" is this service's addition to its error types.
TEI_PATHS = frozenset({"/", "/predict", "/info", "/health"})
TEI_ERROR_TYPES = {401: "Unauthorized", 408: "Validation", 413: "Validation"}


class GatewayConfig:
    """Set by the service when it starts (settings are read there); read per request."""

    auth_token: bytes | None = None
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0
    max_requests_per_connection: int = 0  # 0: keep-alive connections are never recycled


CONFIG = GatewayConfig()
# Requests seen per open connection, keyed by (client, server) address. Bounded: a closed
# connection's entry is never told about, so the oldest entries are dropped beyond this.
_CONNECTION_REQUESTS: collections.OrderedDict[Any, int] = collections.OrderedDict()
_MAX_TRACKED_CONNECTIONS = 4096


def recycle_connection(scope: Scope) -> bool:
    """Whether this request is the last one its keep-alive connection gets (`Connection:
    close` on the answer). Reconnecting clients land on whichever worker accepts first, which
    tends to be the less busy one: this is how load spreads again over workers, and onto a
    worker that replaced a dead one."""
    limit = CONFIG.max_requests_per_connection
    client = scope.get("client")
    if limit <= 0 or client is None:
        return False
    key = (tuple(client), tuple(scope.get("server") or ()))
    count = _CONNECTION_REQUESTS.pop(key, 0) + 1
    if count >= limit:
        return True
    _CONNECTION_REQUESTS[key] = count
    if len(_CONNECTION_REQUESTS) > _MAX_TRACKED_CONNECTIONS:
        _CONNECTION_REQUESTS.popitem(last=False)
    return False


async def _json_error(
    send: Send, path: str, status: int, message: str, field: str, **headers: str
) -> None:
    if path in TEI_PATHS:
        shaped = {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Validation")}
    else:
        shaped = {"error": message, "field": field}
    body = json.dumps(shaped).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def token_matches(given: bytes | None, expected: bytes) -> bool:
    # Constant-time: response timing must not reveal how much of a guess was right (a plain
    # `==` stops at the first differing byte). compare_digest also takes different lengths.
    return given is not None and hmac.compare_digest(given, expected)


def bearer_token(scope: Scope) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class BodyRefused(Exception):
    """Raised from `receive` while the app reads the body; the app answers `status`."""

    status = 400
    message = "the body was refused"


class BodyTooLarge(BodyRefused):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.message = f"the body is over {limit} bytes: send fewer texts"


class BodyTimeout(BodyRefused):
    status = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.message = f"the body did not arrive within {seconds:g} s: send it at once"


# The context of the deadline timers: empty, shared. asyncio.timeout_at's timer would hold the
# request's context (its OpenTelemetry span and everything that refers to) until the timer's
# due time, cancelled or not: at hundreds of requests per second that kept ~20 objects per
# request alive for body_timeout_s, and full garbage collections took 100-350 ms.
TIMER_CONTEXT = contextvars.Context()


async def _receive_before(receive: Receive, deadline: float) -> Message:
    """`await receive()`, or BodyTimeout when it has not returned by `deadline` (loop time)."""
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_at(deadline, expire, context=TIMER_CONTEXT)
    try:
        return await receive()
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:  # our deadline, not a cancellation from outside
            raise BodyTimeout(CONFIG.body_timeout_s) from None
        raise
    finally:
        timer.cancel()  # drops the callback; the empty context holds nothing


class Gateway:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        expected = CONFIG.auth_token
        if (
            expected is not None
            and scope["path"] not in OPEN_PATHS
            and not token_matches(bearer_token(scope), expected)
        ):
            await _json_error(
                send,
                scope["path"],
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                "authorization",
                **{"www-authenticate": "Bearer"},
            )
            return
        limit = CONFIG.max_body_bytes
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await _json_error(
                        send,
                        scope["path"],
                        413,
                        f"the body is over {limit} bytes: send fewer texts",
                        "body",
                    )
                    return
                break
        # Chunked bodies carry no length: count while the app reads and stop at the limit.
        # A client sending a byte now and then would hold a connection and a request slot
        # for ever (slowloris): the whole body must arrive within body_timeout_s.
        received = 0
        body_done = False
        started = False
        close = recycle_connection(scope)
        deadline = asyncio.get_running_loop().time() + CONFIG.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only http.disconnect comes: no deadline then
                return await receive()
            message = await _receive_before(receive, deadline)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if close:
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyRefused as exc:
            if not started:
                await _json_error(send, scope["path"], exc.status, exc.message, "body")
