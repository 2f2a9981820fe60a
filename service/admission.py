"""Admission control for one worker: let bursts queue, refuse sustained overload at the door.

A fixed limit (requests in flight, texts queued) cannot tell a burst from overload: set low,
it refuses Poisson bursts at 70% load; set high, it lets a backlog grow under overload until
every answer is late. This controller follows CoDel ("Controlling Queue Delay", Nichols and
Jacobson, https://queue.acm.org/detail.cfm?id=2209336) and the way Facebook applies it to
server queues ("Fail at Scale", Maurer, https://queue.acm.org/detail.cfm?id=2839461): a
queue is in trouble only when its delay stays above a target for a whole interval. Concretely:

- **Normal**: every request is admitted. Each batch reports the wait of the freshest job it
  took; a burst makes waits long for a moment, then the queue drains and a short wait resets
  the clock.
- **Overloaded**: entered when, for `interval`, every batch of a model left texts behind in
  its queue and even the freshest job it took had waited longer than `target` beyond the
  run time of the batch before it (counting at most `overload_max_wait_ms` of that run
  time): a standing queue, arrivals outrun what the model serves, batches as large as they
  may be. A request that arrives while a batch runs waits for it however short the queue
  is: where one batch takes longer than the target (a slow CPU, or batching that saves
  nothing there), that wait alone was over target and 70% load was refused. The door
  then admits a request only while the work ahead of it, every admitted request not yet
  in a running batch at the measured model time per request, is under `target`; the rest
  is refused before its body is read (service/door.py). So the work ahead stays about
  `target`, and an admitted request waits about `target`. The time per request is taken
  from batches at least half full only (small batches cost more per request); under
  overload most batches hold a few texts, so the price is that of the last such batch
  (docs/admission.md, on the tail under overload). The estimate serves the door only:
  whether the worker is overloaded is decided by the measured queue delay alone.
- **Back to normal**: after an interval in which the door refused nothing (the load fits
  again by itself).

While overloaded the batchers also serve the freshest requests first (adaptive LIFO, from the
same article): a request at the back of an old backlog is likely already given up by its
client, while a fresh one can still be answered in time. With it goes the article's short
queue timeout: a text that waited `overload_max_wait_ms` is refused, not answered late.

Written here rather than taken from a library: the decision needs this service's own queue
(requests admitted and not yet in a batch, the model time per request of its batches) and
must run inside the worker's event loop on every request at a cost of microseconds; the
proxies that implement adaptive concurrency (Envoy) or CoDel (the kernel's fq_codel) sit
outside the process and see neither.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdmissionSettings:
    # The queue delay accepted as normal. Under sustained overload the door keeps about this
    # much work queued: enough for full batches, short enough that admitted requests are
    # answered within the latency objective.
    target_ms: float = 20.0
    # How long the delay must stay above target before requests are refused, and how long
    # the door must go without refusing before it admits everything again. CoDel's default.
    interval_ms: float = 100.0
    # While overloaded, a text queued this long is refused instead of answered late: the
    # short queue timeout that goes with adaptive LIFO in "Fail at Scale". Freshest first
    # would otherwise leave a few admitted requests behind newer ones until the backstop
    # (max_latency_ms), and their answers, 100-200 ms late, made the accepted p99.
    overload_max_wait_ms: float = 50.0
    enabled: bool = True

    def __post_init__(self) -> None:
        for field in ("target_ms", "interval_ms", "overload_max_wait_ms"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0 ms, got {getattr(self, field)}")


class AdmissionControl:
    """One per worker process; the door and every batcher of the worker report to it. Not
    thread-safe: used from the worker's event loop only (the batchers report from there)."""

    def __init__(
        self,
        settings: AdmissionSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self.configure(settings or AdmissionSettings())
        # Per batcher: when its queue started standing (absent: it drained, or waits are short).
        self._above_since: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()
        self._last_refusal = 0.0
        self.in_flight = 0  # admitted classification requests not answered yet
        self.running = 0  # of those, the ones in a batch the model is running now
        # Seconds of model time per request, a moving average over recent batches (all
        # models of the worker: they share its cores).
        self.seconds_per_request = 0.0
        self.last_batch_s = 0.0  # the run time of the worker's latest batch, any model
        # Batches that may run at once (the most lanes of any of the worker's models): the
        # work ahead is shared by them. Their run time, measured while they share the cores,
        # already holds what running at once costs each.
        self.lanes = 1
        self.overloaded = False
        self.refused = 0  # since start, for logs and tests

    def configure(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self._target_s = settings.target_ms / 1000
        self._interval_s = settings.interval_ms / 1000
        self._overload_wait_s = settings.overload_max_wait_ms / 1000

    def forget(self, queue: object) -> None:
        """A batcher closed."""
        self._above_since.pop(queue, None)

    def backlog_s(self) -> float:
        """Estimated seconds of model work ahead of a request arriving now: every admitted
        request not yet in a running batch, queued for a model or still in the HTTP pipeline
        (body read, validation), at the measured model time per request."""
        return max(0, self.in_flight - self.running) * self.seconds_per_request / self.lanes

    # -- what the batchers report

    def batch_started(
        self, queue: object, freshest_wait_s: float, left_texts: int, now: float | None = None
    ) -> None:
        """`queue`'s batch started: `freshest_wait_s`, how long the most recently queued job
        it took had waited; `left_texts`, the texts still queued after it. CoDel's test: the
        minimum delay staying above target for an interval means a standing queue. A queue
        that drains, or serves its freshest job quickly, resets the clock (a burst)."""
        now = self._clock() if now is None else now
        # Waiting out the batch that ran before is what any request arriving during it does;
        # but no longer than the wait that overload refuses. Without that bound the batches
        # a sudden flood makes (16 texts take 100 ms on some CPUs) excused the very waits the
        # flood made, and overload was declared later, after more answers had become late.
        excused = min(self.last_batch_s, self._overload_wait_s)
        if left_texts == 0 or freshest_wait_s < self._target_s + excused:
            self._above_since.pop(queue, None)
            return
        since = self._above_since.setdefault(queue, now)
        if now - since >= self._interval_s:
            self._enter_overload(now)

    def serves_lanes(self, lanes: int) -> None:
        """A batcher of this worker runs up to `lanes` batches at once."""
        self.lanes = max(self.lanes, lanes)

    def batch_running(self, requests: int) -> None:
        self.running += requests

    def batch_done(self, requests: int, seconds: float, *, half_full: bool = True) -> None:
        """A batch of `requests` took `seconds`. Only batches at least half full set the
        cost per request that prices the backlog: a small batch costs more per request (the
        call's fixed cost shared by few). Priced by the small batches of a moderate load
        after an overload, a short queue looks over target, the door keeps refusing, and
        the worker never leaves the overloaded state (tests/test_admission.py simulates it)."""
        self.running -= requests
        self.last_batch_s = seconds
        if requests and (half_full or self.seconds_per_request == 0.0):
            per_request = seconds / requests
            if self.seconds_per_request == 0.0:
                self.seconds_per_request = per_request
            else:  # recent batches weigh most: batch sizes, and the cost per request, follow load
                self.seconds_per_request += 0.2 * (per_request - self.seconds_per_request)

    # -- what the door asks and reports

    def admit(self, now: float | None = None) -> bool:
        """Whether a new classification request may enter. Called before its body is read;
        an admitted request is reported with `entered` and `left`."""
        if not self.overloaded:
            return True
        now = self._clock() if now is None else now
        if self.backlog_s() < self._target_s:
            if now - self._last_refusal >= self._interval_s:
                self.overloaded = False  # a whole interval fit without refusing: load is down
                self._above_since.clear()
            return True
        self._last_refusal = now
        self.refused += 1
        return False

    def entered(self) -> None:
        self.in_flight += 1

    def left(self) -> None:
        self.in_flight -= 1

    def _enter_overload(self, now: float) -> None:
        if self.settings.enabled and not self.overloaded:
            self.overloaded = True
            self._last_refusal = now  # the interval without refusals starts now


# The worker's controller (one service instance per worker process), configured from the
# settings when the service starts; the door and the batchers of this process share it.
CONTROL = AdmissionControl()
