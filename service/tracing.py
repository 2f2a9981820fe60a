"""Which requests get an OpenTelemetry span: every route but the classify routes, by default.

BentoML wraps every request in opentelemetry's ASGI middleware. Its span is created and
filled with attributes whether or not anything records it (BentoML's sample rate is 0 unless
a tracing exporter is configured), and three spans are made per request (the request, its
receive, its send). On a 2-core machine that is 0.3 to 0.55 ms of the 1.9 to 2.1 ms of
event-loop CPU a single-text request costs outside the model (`bench/profile_service.py
--cpu-rounds 5`), paid on the cores the model needs. So the classify routes are left out of
tracing through BentoML's own `tracing.excluded_urls`, and `SMALLCLS_TRACE_CLASSIFY=true`
puts them back: set it together with a tracing exporter. What a classify response loses
without its span is BentoML's `X-BentoML-Request-ID` header, which is the span's id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from service.settings import ENV_TRACE_CLASSIFY

logger = logging.getLogger(__name__)


def untraced_url_pattern(paths: Iterable[str]) -> str:
    """A regex for opentelemetry's ExcludeList, which searches the request's full URL
    (`scheme://host/path`, no query string): these paths exactly, nothing under them."""
    alternatives = "|".join(re.escape(p.lstrip("/")) for p in sorted(paths))
    return rf"^[a-z]+://[^/]*/({alternatives})$"


def service_config(trace_classify: bool, classify_paths: Iterable[str]) -> dict[str, Any]:
    """What the service's BentoML config gets for tracing (nothing when the classify routes
    are traced; a user's BentoML config file still overrides it)."""
    if trace_classify:
        return {}
    return {"tracing": {"excluded_urls": [untraced_url_pattern(classify_paths)]}}


def warn_if_exporter_untraced(trace_classify: bool, exporter_type: str | None) -> None:
    """A tracing exporter with the classify routes left out is almost always a mistake."""
    if exporter_type and not trace_classify:
        logger.warning(
            "BentoML's tracing exporter is %r, but the classify routes are not traced: set "
            "%s=true to trace them (0.3 to 0.55 ms of CPU per request)",
            exporter_type,
            ENV_TRACE_CLASSIFY,
        )
