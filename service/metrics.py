"""Prometheus metrics per model, exported on BentoML's `/metrics` next to its own."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class Metrics:
    requests: Any  # Counter {model, status}: every /classify answer, errors included
    latency: Any  # Histogram {model}: seconds from request parsed to answer
    batch_size: Any  # Histogram {model}: texts per onnxruntime batch
    queue_time: Any  # Histogram {model}: seconds a request waited for its batch
    rejected: Any  # Counter {model, reason}: answered 503 because of overload
    texts: Any  # Counter {model}: texts classified

    def observe_batch(self, model: str, size: int, waits: list[float]) -> None:
        self.batch_size.labels(model=model).observe(size)
        queue = self.queue_time.labels(model=model)
        for wait in waits:
            queue.observe(wait)


@functools.cache
def get_metrics() -> Metrics:
    """Created on first use, once per process: BentoML sets PROMETHEUS_MULTIPROC_DIR in each
    worker after importing the service module, and prometheus_client must see it first."""
    import prometheus_client as prom

    return Metrics(
        requests=prom.Counter(
            "smallcls_requests", "Classify requests by model and HTTP status", ["model", "status"]
        ),
        latency=prom.Histogram(
            "smallcls_request_seconds",
            "Classify latency in the service (parsed to answered)",
            ["model"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=prom.Histogram(
            "smallcls_batch_size", "Texts per model call", ["model"], buckets=BATCH_BUCKETS
        ),
        queue_time=prom.Histogram(
            "smallcls_queue_seconds",
            "Time a request waited for its batch to start",
            ["model"],
            buckets=QUEUE_BUCKETS,
        ),
        rejected=prom.Counter(
            "smallcls_rejected", "Requests refused with 503 under overload", ["model", "reason"]
        ),
        texts=prom.Counter("smallcls_texts", "Texts classified", ["model"]),
    )
