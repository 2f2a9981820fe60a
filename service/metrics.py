"""Prometheus metrics per model, exported on BentoML's `/metrics` next to its own.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): a
`smallcls_` prefix, the base unit as suffix (`_seconds`, `_texts`), counters ending `_total`
(prometheus_client appends it to a Counter's name) and `_info` for the constant-1 gauge that
carries a model's facts as labels. BentoML runs prometheus_client in multiprocess mode (one
directory of value files shared by the workers), so every gauge says how the workers' values
combine: `livesum` for the texts waiting (the service's queue is the sum of its workers'),
`livemax` for the model info (1 while any live worker serves that version).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# The names as scraped (a Counter's `_total` included), for docs, alert rules and tests.
REQUESTS = "smallcls_requests_total"
REQUEST_DURATION = "smallcls_request_duration_seconds"
BATCH_SIZE = "smallcls_batch_size_texts"
QUEUE_WAIT = "smallcls_queue_wait_seconds"
QUEUE_DEPTH = "smallcls_queue_depth_texts"
REJECTED = "smallcls_rejected_requests_total"
SERVER_ERRORS = "smallcls_server_errors_total"
TEXTS = "smallcls_texts_total"
MODEL_INFO = "smallcls_model_info"
GC_PAUSE = "smallcls_gc_pause_seconds"
LOOP_LAG = "smallcls_event_loop_lag_seconds"
BATCH_DURATION = "smallcls_batch_duration_seconds"
MODEL_CPU = "smallcls_model_cpu_seconds_total"
# Labels of MODEL_INFO, from the model's manifest (see LoadedModel.info_labels).
MODEL_INFO_LABELS = ("model", "version", "variant", "precision", "family", "base_model")


@dataclasses.dataclass(frozen=True)
class Metrics:
    requests: Any  # Counter {model, route, status}: every classification answer, errors included
    latency: Any  # Histogram {model}: seconds from request parsed to answer
    batch_size: Any  # Histogram {model}: texts per onnxruntime batch
    queue_time: Any  # Histogram {model}: seconds a request waited for its batch
    queue_depth: Any  # Gauge {model}: texts waiting for a batch now
    rejected: Any  # Counter {model, reason}: answered 503 (or TEI's 429) because of overload
    server_errors: Any  # Counter {model, reason}: 5xx of ours (model_failed, internal)
    texts: Any  # Counter {model}: texts classified
    model_info: Any  # Gauge {MODEL_INFO_LABELS}: 1 per served model version
    gc_pause: Any  # Histogram {generation}: seconds each garbage collection stopped a worker
    loop_lag: Any  # Histogram: seconds a worker's event loop woke late (service/loop_lag.py)
    batch_duration: Any  # Histogram {model}: seconds each batch took in the model's thread
    model_cpu: Any  # Counter {model}: CPU seconds of the model threads in those batches

    def batch_ran(self, model: str, size: int, seconds: float, cpu_seconds: float) -> None:
        self.batch_duration.labels(model=model).observe(seconds)
        self.model_cpu.labels(model=model).inc(cpu_seconds)

    def observe_batch(self, model: str, size: int, waits: list[float]) -> None:
        self.batch_size.labels(model=model).observe(size)
        queue = self.queue_time.labels(model=model)
        for wait in waits:
            queue.observe(wait)

    def queue_changed(self, model: str, delta: int) -> None:
        # inc/dec, not set: during a reload the old and the new version of a model share its
        # name, and each only knows its own queue.
        self.queue_depth.labels(model=model).inc(delta)

    def show_models(
        self, served: Iterable[Mapping[str, str]], retired: Iterable[Mapping[str, str]] = ()
    ) -> None:
        """Model info: 1 for each served version, 0 for versions replaced by a reload (the
        labels of each: `LoadedModel.info_labels`).
        Set to 0 rather than removed: in multiprocess mode a removed series stays in the
        worker's value file with its last value, so a removal would keep saying 1."""
        for labels in retired:
            self.model_info.labels(**labels).set(0)
        for labels in served:
            self.model_info.labels(**labels).set(1)
            # The queue series exists from load on, at 0, so an idle model is seen as idle.
            self.queue_depth.labels(model=labels["model"])


@functools.cache
def get_metrics() -> Metrics:
    """Created on first use, once per process: BentoML sets PROMETHEUS_MULTIPROC_DIR in each
    worker after importing the service module, and prometheus_client must see it first."""
    import prometheus_client as prom

    return Metrics(
        requests=prom.Counter(
            REQUESTS.removesuffix("_total"),
            "Classification requests by model, route and HTTP status",
            ["model", "route", "status"],
        ),
        latency=prom.Histogram(
            REQUEST_DURATION,
            "Classification latency in the service (request parsed to answer ready)",
            ["model"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=prom.Histogram(
            BATCH_SIZE, "Texts per model call", ["model"], buckets=BATCH_BUCKETS
        ),
        queue_time=prom.Histogram(
            QUEUE_WAIT,
            "Time a request waited in its model's queue for its batch to start",
            ["model"],
            buckets=QUEUE_BUCKETS,
        ),
        queue_depth=prom.Gauge(
            QUEUE_DEPTH,
            "Texts waiting in the model's queue, summed over live workers",
            ["model"],
            multiprocess_mode="livesum",
        ),
        rejected=prom.Counter(
            REJECTED.removesuffix("_total"),
            "Requests refused because the model was overloaded",
            ["model", "reason"],
        ),
        server_errors=prom.Counter(
            SERVER_ERRORS.removesuffix("_total"),
            "Requests the service failed (5xx): the model raised, or the service's own code",
            ["model", "reason"],
        ),
        texts=prom.Counter(TEXTS.removesuffix("_total"), "Texts classified", ["model"]),
        model_info=prom.Gauge(
            MODEL_INFO,
            "1 for each served model version (0: replaced by a reload); facts as labels",
            list(MODEL_INFO_LABELS),
            multiprocess_mode="livemax",
        ),
        gc_pause=prom.Histogram(
            GC_PAUSE,
            "Seconds each garbage collection stopped a worker's event loop",
            ["generation"],
            buckets=GC_BUCKETS,
        ),
        loop_lag=prom.Histogram(
            LOOP_LAG,
            "Seconds a worker's event loop woke later than asked, every 20 ms: what every "
            "request in that worker waited besides its queue and its model",
            buckets=LAG_BUCKETS,
        ),
        batch_duration=prom.Histogram(
            BATCH_DURATION,
            "Seconds each batch took in its model's thread, waiting for a core included",
            ["model"],
            buckets=LATENCY_BUCKETS,
        ),
        model_cpu=prom.Counter(
            MODEL_CPU.removesuffix("_total"),
            "CPU seconds the model threads spent in batches: over the batches' seconds, the "
            "share of their time they had a core",
            ["model"],
        ),
    )
