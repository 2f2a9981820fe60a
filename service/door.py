"""The outermost ASGI layer: overload is refused here, before anything else costs CPU.

BentoML wraps its app in its own metrics, OpenTelemetry and access-log middleware, and puts a
service's `add_asgi_middleware` layers inside them; a refusal made there (BentoML's own 429
for `max_concurrency` included) has already paid for a trace span, a metrics update and
route matching, and, for a refusal made in the API, for reading and parsing the body. Under
overload those refusals eat the CPU the answers need. Here, the refusal is decided from the
request line alone by the worker's admission control (service/admission.py): no body is
read, nothing else runs; the answer is a short 503 with `Retry-After` (TEI's routes: its
429 and error body), counted in `smallcls_rejected_requests_total{reason="admission"}`.

`install` puts the layer outside BentoML's stack by wrapping what the service's `to_asgi`
returns, which is what BentoML's worker hands to uvicorn.
"""

from __future__ import annotations

import json
from typing import Any

from service import admission
from service.gateway import TEI_PATHS, ASGIApp, Receive, Scope, Send
from service.metrics import get_metrics

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


class Door:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in CLASSIFY_PATHS
            and scope["method"] == "POST"
            and not admission.CONTROL.admit()
        ):
            await self._refuse(scope["path"], send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(path: str, send: Send) -> None:
        status, body = _REFUSALS[path]
        metrics = get_metrics()
        metrics.rejected.labels(model=MODEL_LABEL, reason=REASON).inc()
        metrics.requests.labels(model=MODEL_LABEL, route=path, status=str(status)).inc()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"retry-after", RETRY_AFTER_S.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def install(service: Any) -> None:
    """Make `service.to_asgi()` (a BentoML Service) return its app wrapped in a Door.

    BentoML's Service is a slotted attrs class, so the method cannot be replaced on the
    instance; the instance gets a subclass that only overrides `to_asgi`."""
    base = type(service)

    class ServiceWithDoor(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            return Door(base.to_asgi(self, is_main))

    ServiceWithDoor.__name__ = ServiceWithDoor.__qualname__ = base.__name__
    service.__class__ = ServiceWithDoor
