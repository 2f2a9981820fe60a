"""The outermost ASGI layer: overload is refused here, before anything else costs CPU.

BentoML wraps its app in its own metrics, OpenTelemetry and access-log middleware, and puts a
service's `add_asgi_middleware` layers inside them; a refusal made there (BentoML's own 429
for `max_concurrency` included) has already paid for a trace span, a metrics update and
route matching, and, for a refusal made in the API, for reading and parsing the body. Under
overload those refusals eat the CPU the answers need. Here, the refusal is decided from the
request line alone by the worker's admission control (service/admission.py): no body is
read, nothing else runs; the answer is a short 503 with `Retry-After` (TEI's routes: its
429 and error body), counted in `smallcls_rejected_requests_total{reason="admission"}`.

The door also enforces the request timeout, in place of BentoML's TimeoutMiddleware, which
`install` takes out of the stack. That middleware schedules a timer per request and never
cancels it: the timer holds the request's context (its OpenTelemetry span, futures, a dozen
more objects) for the whole timeout, 60 s by default, so under load about a million objects
stay alive and every full garbage collection stops the worker for 100-350 ms. The door's
timer runs in an empty context and is cancelled when the answer is sent.

`install` puts the layer outside BentoML's stack by wrapping what the service's `to_asgi`
returns, which is what BentoML's worker hands to uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from service import admission
from service.gateway import TEI_PATHS, TIMER_CONTEXT, ASGIApp, Message, Receive, Scope, Send
from service.metrics import get_metrics

logger = logging.getLogger(__name__)

# The routes that classify (POST): only they queue for a model. Probes, metrics, the model
# list and admin calls pass even under overload.
CLASSIFY_PATHS = frozenset({"/classify", "/predict", "/"})
RETRY_AFTER_S = "1"
MODEL_LABEL = "-"  # the body, which names the model, is not read
REASON = "admission"


def _refusal(path: str) -> tuple[int, bytes]:
    message = "the service is overloaded: retry after the Retry-After seconds"
    if path in TEI_PATHS:  # Text Embeddings Inference answers overload with 429
        return 429, json.dumps({"error": message, "error_type": "Overloaded"}).encode()
    return 503, json.dumps({"error": message, "field": "model"}).encode()


# Built once: the refusal path allocates nothing it can avoid.
_REFUSALS = {path: _refusal(path) for path in CLASSIFY_PATHS}


async def _answer(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": [*head, *headers]})
    await send({"type": "http.response.body", "body": body})


class Door:
    def __init__(self, app: ASGIApp, timeout_s: float | None = None) -> None:
        self.app = app
        self.timeout_s = timeout_s  # None: no deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in CLASSIFY_PATHS and scope["method"] == "POST":
            control = admission.CONTROL
            if not control.admit():
                await self._refuse(scope["path"], send)
                return
            control.entered()
            try:
                await self._serve(scope, receive, send)
            finally:
                control.left()
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.timeout_s is None:
            await self.app(scope, receive, send)
        else:
            await self._before_deadline(scope, receive, send, self.timeout_s)

    async def _before_deadline(
        self, scope: Scope, receive: Receive, send: Send, timeout_s: float
    ) -> None:
        """The app's answer, or 504 when it has not started answering within `timeout_s`
        (BentoML's answer and body for its own timeout)."""
        task = asyncio.current_task()
        assert task is not None
        started = fired = False

        def expire() -> None:
            nonlocal fired
            if not started:
                fired = True
                task.cancel()

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        timer = asyncio.get_running_loop().call_later(timeout_s, expire, context=TIMER_CONTEXT)
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not (fired and task.uncancel() == 0):
                raise  # cancelled from outside: the client went away, or shutdown
            message = f"Not able to process the request in {timeout_s:g} seconds"
            await _answer(send, 504, json.dumps({"error": message}).encode())
        finally:
            timer.cancel()

    @staticmethod
    async def _refuse(path: str, send: Send) -> None:
        status, body = _REFUSALS[path]
        metrics = get_metrics()
        metrics.rejected.labels(model=MODEL_LABEL, reason=REASON).inc()
        metrics.requests.labels(model=MODEL_LABEL, route=path, status=str(status)).inc()
        await _answer(send, status, body, (b"retry-after", RETRY_AFTER_S.encode()))


def install(service: Any) -> None:
    """Make `service.to_asgi()` (a BentoML Service) return its app wrapped in a Door.

    BentoML's Service is a slotted attrs class, so the method cannot be replaced on the
    instance; the instance gets a subclass that only overrides `to_asgi`."""
    base = type(service)

    class ServiceWithDoor(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            app = base.to_asgi(self, is_main)
            return Door(app, take_timeout_middleware(app))

    ServiceWithDoor.__name__ = ServiceWithDoor.__qualname__ = base.__name__
    service.__class__ = ServiceWithDoor


def take_timeout_middleware(app: Any) -> float | None:
    """Remove BentoML's TimeoutMiddleware from `app` (a Starlette app whose middleware stack
    is not built yet) and return its timeout, which the door then enforces; None, and the
    app unchanged, where it has none."""
    middleware = getattr(app, "user_middleware", None)
    if middleware is None or getattr(app, "middleware_stack", None) is not None:
        logger.warning("BentoML's app has no middleware list to edit: its timeout stays")
        return None
    for entry in list(middleware):
        if getattr(entry.cls, "__name__", "") == "TimeoutMiddleware":
            middleware.remove(entry)
            return float(entry.kwargs["timeout"])
    return None
