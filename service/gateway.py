"""ASGI middleware in front of every route: bearer-token auth and the request-body size limit.

Both act before the body is read: an unauthenticated or oversized request costs no parsing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a token: orchestrators probe these without credentials.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


class GatewayConfig:
    """Set by the service when it starts (settings are read there); read per request."""

    auth_token: bytes | None = None
    max_body_bytes: int = 1 << 20


CONFIG = GatewayConfig()


async def _json_error(send: Send, status: int, message: str, field: str, **headers: str) -> None:
    body = json.dumps({"error": message, "field": field}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def bearer_token(scope: Scope) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class BodyTooLarge(Exception):
    pass


class Gateway:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        expected = CONFIG.auth_token
        if expected is not None and scope["path"] not in OPEN_PATHS:
            token = bearer_token(scope)
            # Constant-time: response timing must not reveal how much of a guess was right.
            if token is None or not hmac.compare_digest(token, expected):
                await _json_error(
                    send,
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
                        send, 413, f"the body is over {limit} bytes: send fewer texts", "body"
                    )
                    return
                break
        # Chunked bodies carry no length: count while the app reads and stop at the limit.
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _json_error(
                    send, 413, f"the body is over {limit} bytes: send fewer texts", "body"
                )
