"""Who had the CPU in each period of a load test, and how fast the server itself answered.

A load test on a shared machine measures the server, the load generator on the same cores,
and whatever else the host runs. When one minute of a steady load is slower than the next,
the question is which of them took the cores: the server's process tree (its own CPU), the
load generator, other processes on the same kernel (what the host's busy time leaves after
those two), or the hypervisor (steal, time this virtual CPU was ready but not run). And the
server's own latency histogram (request parsed to answer) tells a slow server from a slow
client: a minute whose client-side p95 is over the objective while the server answered within
it was lost between the socket and the load generator's clock.

Cumulative counters are sampled during the run and differenced per period, so a sample costs
a few /proc reads and one /metrics scrape; psutil already reads the host's counters on every
platform it supports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

from service.metrics import BATCH_SIZE, QUEUE_WAIT, REQUEST_DURATION


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """Cumulative counters at one moment (seconds of CPU, summed over every CPU)."""

    t: float  # epoch seconds
    server_s: float  # the server's process tree
    load_s: float  # the load generator's processes
    host_busy_s: float  # the whole host kernel: user + nice + system + irq + softirq
    steal_s: float  # ready to run, but the hypervisor ran something else
    answered: float | None = None  # server-side answers so far (histogram count)
    within: float | None = None  # of which within the objective (histogram bucket)
    batch_texts: float | None = None  # texts run so far, over `batches` model calls
    batches: float | None = None
    queue_wait_s: float | None = None  # seconds waited for a batch so far, over `queued`
    queued: float | None = None


def host_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole host since boot."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system
    busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return busy, getattr(times, "steal", 0.0)


def main_thread_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the main threads of these processes.

    In a service worker the main thread runs the event loop: HTTP parsing, admission, the
    refusals and the ASGI app, while each model runs in its own executor thread. So this
    counts what a refusal costs without the model's CPU, whose cost per answer changes with
    the batch sizes that the load makes. A process that is gone counts 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for thread in psutil.Process(pid).threads():
                if thread.id == pid:  # Linux: the main thread's id is the process id
                    total += thread.user_time + thread.system_time
    return total


def objective_bucket(histogram: dict[str, float], objective_s: float) -> str:
    """The smallest histogram edge at or above the objective: answers counted in it are
    within the objective (or within the next edge, where none sits exactly on it)."""
    edges = [le for le in histogram if le != "+Inf" and float(le) >= objective_s - 1e-12]
    return min(edges, key=float, default="+Inf")


def model_series(text: str, model: str) -> dict[tuple[str, str | None], float]:
    """One model's Prometheus samples from a /metrics text, summed over workers, keyed by
    (series name, the `le` label or None): one pass over the text."""
    out: dict[tuple[str, str | None], float] = {}
    label = f'model="{model}"'
    for line in text.splitlines():
        name, brace, rest = line.partition("{")
        if not brace or label not in rest:
            continue
        le = rest.split('le="', 1)[1].split('"', 1)[0] if 'le="' in rest else None
        key = (name, le)
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def latency_histogram(text: str, model: str) -> dict[str, float]:
    """`smallcls_request_duration_seconds` buckets (le -> count) for one model, summed over
    workers."""
    series = model_series(text, model)
    return {le: v for (name, le), v in series.items() if name == f"{REQUEST_DURATION}_bucket"}


class CpuSampler:
    """Samples the counters on demand; `scrape` returns the server's /metrics text, or None
    where it cannot be read (that sample then has no server-side figures)."""

    def __init__(
        self,
        server_cpu_s: Callable[[], float],
        load_cpu_s: Callable[[], float],
        scrape: Callable[[], str | None],
        model: str,
        objective_s: float,
    ) -> None:
        self.server_cpu_s = server_cpu_s
        self.load_cpu_s = load_cpu_s
        self.scrape = scrape
        self.model = model
        self.objective_s = objective_s
        self.samples: list[CpuSample] = []

    def server_counters(self) -> dict[str, float | None]:
        text = self.scrape()
        if text is None:
            return {}
        series = model_series(text, self.model)
        hist = {le: v for (name, le), v in series.items() if name == f"{REQUEST_DURATION}_bucket"}
        edge = objective_bucket(hist, self.objective_s)
        return {
            "answered": series.get((f"{REQUEST_DURATION}_count", None)),
            "within": hist.get(edge),
            "batch_texts": series.get((f"{BATCH_SIZE}_sum", None)),
            "batches": series.get((f"{BATCH_SIZE}_count", None)),
            "queue_wait_s": series.get((f"{QUEUE_WAIT}_sum", None)),
            "queued": series.get((f"{QUEUE_WAIT}_count", None)),
        }

    def sample(self) -> CpuSample:
        counters = self.server_counters()
        busy, steal = host_cpu_s()
        server_s, load_s = self.server_cpu_s(), self.load_cpu_s()
        if self.samples:
            # A process tree's sum drops when a process in it ends (Locust at the end of
            # the run, a replaced worker): hold the counter rather than go backwards.
            server_s = max(server_s, self.samples[-1].server_s)
            load_s = max(load_s, self.samples[-1].load_s)
        sample = CpuSample(
            t=time.time(),
            server_s=server_s,
            load_s=load_s,
            host_busy_s=busy,
            steal_s=steal,
            **counters,
        )
        self.samples.append(sample)
        return sample


def period_share(samples: Sequence[CpuSample], lo: float, hi: float) -> dict[str, Any]:
    """Cores used on average between the last sample at or before `lo` and the first at or
    after `hi` (the nearest inside where the run has none outside); the server's share of
    answers within the objective, texts per model call and mean queue wait in that span.
    Empty where fewer than two samples bracket the period."""
    if len(samples) < 2:
        return {}
    before = [s for s in samples if s.t <= lo]
    after = [s for s in samples if s.t >= hi]
    first = before[-1] if before else min(samples, key=lambda s: s.t)
    last = after[0] if after else max(samples, key=lambda s: s.t)
    span = last.t - first.t
    if span <= 0:
        return {}
    server = (last.server_s - first.server_s) / span
    load = (last.load_s - first.load_s) / span
    busy = (last.host_busy_s - first.host_busy_s) / span
    out: dict[str, Any] = {
        "server_cores": server,
        "load_cores": load,
        # Clamped: the counters are read a few microseconds apart, and a process that
        # ended between samples takes its CPU out of the tree's sum.
        "other_cores": max(0.0, busy - server - load),
        "steal_cores": (last.steal_s - first.steal_s) / span,
    }
    out["server_within"] = ratio(first, last, "within", "answered")
    out["texts_per_call"] = ratio(first, last, "batch_texts", "batches")
    wait = ratio(first, last, "queue_wait_s", "queued")
    out["queue_wait_ms"] = None if wait is None else 1000 * wait
    return out


def ratio(first: CpuSample, last: CpuSample, part: str, whole: str) -> float | None:
    """Δpart / Δwhole between two samples, None where either is missing or Δwhole is 0."""
    values = [getattr(s, f) for s in (first, last) for f in (part, whole)]
    if None in values:
        return None
    p0, w0, p1, w1 = values
    return (p1 - p0) / (w1 - w0) if w1 > w0 else None


def describe(share: dict[str, Any], objective_ms: float) -> str:
    """One period in words: `server 1.21 + load 0.35 + other 0.05 cores (steal 0.00);
    server-side 97.1% <= 50 ms, 2.3 texts/call, queue 4.1 ms`."""
    if not share:
        return "n/a"

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return (
        f"server {share['server_cores']:.2f} + load {share['load_cores']:.2f} + other "
        f"{share['other_cores']:.2f} cores (steal {share['steal_cores']:.2f}); "
        f"server-side {fmt(share['server_within'], '.1%')} <= {objective_ms:g} ms, "
        f"{fmt(share['texts_per_call'], '.1f')} texts/call, "
        f"queue {fmt(share['queue_wait_ms'], '.1f')} ms"
    )
