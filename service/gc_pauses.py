"""Garbage-collection pauses of a worker: kept short, and measured.

A full collection walks every object the worker holds, and a worker holds many from the
start (BentoML, pydantic, tokenizers' vocabularies, onnxruntime's bindings), so each one
stops the event loop, and every request waiting in it, for that long. After the models are
loaded `freeze` moves everything alive into the permanent generation, which collections skip
(the technique of "Dismissing Python Garbage Collection at Instagram",
https://instagram-engineering.com/dismissing-python-garbage-collection-at-instagram-4dca40b29172);
only objects made while serving are collected from then on.

`watch` times every collection; `report` (every second, from the event loop) puts the
pauses into `smallcls_gc_pause_seconds{generation}` and logs one that stopped the worker
longer than LONG_PAUSE_S, so a stall can be told apart from the rest. Nothing is recorded
from inside the collector's callback but a number: prometheus_client and logging take locks,
and a collection can start while this very thread holds one.
"""

from __future__ import annotations

import collections
import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

LONG_PAUSE_S = 0.05
# (generation, seconds, objects collected) since the last report; bounded, in case nobody
# reports.
_PAUSES: collections.deque[tuple[int, float, int]] = collections.deque(maxlen=10_000)


class _Watch:
    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            pause = time.perf_counter() - self.started
            _PAUSES.append((info.get("generation", -1), pause, info.get("collected", 0)))


def freeze() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how
    many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def watch() -> None:
    """Time every collection from now on (once per process)."""
    if not any(isinstance(cb, _Watch) for cb in gc.callbacks):
        gc.callbacks.append(_Watch())


def report(histogram: Any) -> None:
    """Move the pauses measured since the last call into `histogram` {generation}."""
    while _PAUSES:
        generation, pause, collected = _PAUSES.popleft()
        histogram.labels(generation=str(generation)).observe(pause)
        if pause > LONG_PAUSE_S:
            logger.warning(
                "garbage collection of generation %d stopped the worker for %.0f ms "
                "(%d objects collected)",
                generation,
                1000 * pause,
                collected,
            )
