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

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil


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


def host_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole host since boot."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system
    busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return busy, getattr(times, "steal", 0.0)


def objective_bucket(histogram: dict[str, float], objective_s: float) -> str:
    """The smallest histogram edge at or above the objective: answers counted in it are
    within the objective (or within the next edge, where none sits exactly on it)."""
    edges = [le for le in histogram if le != "+Inf" and float(le) >= objective_s - 1e-12]
    return min(edges, key=float, default="+Inf")


class CpuSampler:
    """Samples the counters on demand; `histogram` reads the server's latency buckets
    (le -> cumulative count), or None where they cannot be read."""

    def __init__(
        self,
        server_cpu_s: Callable[[], float],
        load_cpu_s: Callable[[], float],
        histogram: Callable[[], dict[str, float] | None],
        objective_s: float,
    ) -> None:
        self.server_cpu_s = server_cpu_s
        self.load_cpu_s = load_cpu_s
        self.histogram = histogram
        self.objective_s = objective_s
        self.samples: list[CpuSample] = []

    def sample(self) -> CpuSample:
        hist = self.histogram()
        answered = within = None
        if hist:
            answered = hist.get("+Inf")
            within = hist.get(objective_bucket(hist, self.objective_s))
        busy, steal = host_cpu_s()
        sample = CpuSample(
            t=time.time(),
            server_s=self.server_cpu_s(),
            load_s=self.load_cpu_s(),
            host_busy_s=busy,
            steal_s=steal,
            answered=answered,
            within=within,
        )
        self.samples.append(sample)
        return sample


def period_share(samples: Sequence[CpuSample], lo: float, hi: float) -> dict[str, Any]:
    """Cores used on average between the last sample at or before `lo` and the first at or
    after `hi` (the nearest inside where the run has none outside), and the server's share
    of answers within the objective. Empty where fewer than two samples bracket the period."""
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
        "server_within": None,
    }
    if None not in (first.answered, last.answered, first.within, last.within):
        answered = last.answered - first.answered  # type: ignore[operator]
        if answered > 0:
            out["server_within"] = (last.within - first.within) / answered  # type: ignore[operator]
    return out


def describe(share: dict[str, Any], objective_ms: float) -> str:
    """One period in words: `server 1.21 + load 0.35 + other 0.05 cores (steal 0.00);
    server-side 97.1% <= 50 ms`."""
    if not share:
        return "n/a"
    within = share["server_within"]
    side = "n/a" if within is None else f"{within:.1%}"
    return (
        f"server {share['server_cores']:.2f} + load {share['load_cores']:.2f} + other "
        f"{share['other_cores']:.2f} cores (steal {share['steal_cores']:.2f}); "
        f"server-side {side} <= {objective_ms:g} ms"
    )
