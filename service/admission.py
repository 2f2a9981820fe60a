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
  its queue and even the freshest job it took had waited longer than `target` (a standing
  queue: arrivals outrun what the model serves, batches as large as they may be). The door
  then admits a request only while the work already queued ahead of it, estimated from each
  model's measured seconds per text, is under `target`; the rest is refused before its body
  is read (service/door.py). So the queue stays about `target` deep, and an admitted request
  waits about `target`.
- **Back to normal**: after an interval in which the door refused nothing (the load fits
  again by itself).

While overloaded the batchers also serve the freshest requests first (adaptive LIFO, from the
same article): a request at the back of an old backlog is likely already given up by its
client, while a fresh one can still be answered in time.

Written here rather than taken from a library: the decision needs this service's own queue
(texts waiting per model, seconds per text of each model's batches) and must run inside the
worker's event loop on every request at a cost of microseconds; the proxies that implement
adaptive concurrency (Envoy) or CoDel (the kernel's fq_codel) sit outside the process and
see neither.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Callable
from typing import Protocol


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdmissionSettings:
    # The queue delay accepted as normal. Under sustained overload the door keeps about this
    # much work queued: enough for full batches, short enough that admitted requests are
    # answered within the latency objective.
    target_ms: float = 20.0
    # How long the delay must stay above target before requests are refused, and how long
    # the door must go without refusing before it admits everything again. CoDel's default.
    interval_ms: float = 100.0
    enabled: bool = True

    def __post_init__(self) -> None:
        for field in ("target_ms", "interval_ms"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0 ms, got {getattr(self, field)}")


class Queue(Protocol):
    """What the controller reads from each model's batcher."""

    @property
    def queued_texts(self) -> int: ...

    @property
    def seconds_per_text(self) -> float: ...


class AdmissionControl:
    """One per worker process; every batcher of the worker reports to it. Not thread-safe:
    used from the worker's event loop only (the batchers call it from there too)."""

    def __init__(
        self,
        settings: AdmissionSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self.configure(settings or AdmissionSettings())
        self._queues: weakref.WeakSet[Queue] = weakref.WeakSet()
        # Per queue: when its queue started standing (None: it drained or waits are short).
        self._above_since: weakref.WeakKeyDictionary[Queue, float] = weakref.WeakKeyDictionary()
        self._last_refusal = 0.0
        self.overloaded = False
        self.refused = 0  # since start, for logs and tests

    def configure(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self._target_s = settings.target_ms / 1000
        self._interval_s = settings.interval_ms / 1000

    def register(self, queue: Queue) -> None:
        self._queues.add(queue)

    def unregister(self, queue: Queue) -> None:
        self._queues.discard(queue)
        self._above_since.pop(queue, None)

    def backlog_s(self) -> float:
        """Estimated seconds of model work queued in this worker, all models together: they
        share the worker's cores, so one model's backlog delays the others too."""
        return sum(q.queued_texts * q.seconds_per_text for q in list(self._queues))

    def batch_started(
        self, queue: Queue, freshest_wait_s: float, left_texts: int, now: float | None = None
    ) -> None:
        """`queue`'s batch started: `freshest_wait_s`, how long the most recently queued job
        it took had waited; `left_texts`, the texts still queued after it. CoDel's test: the
        minimum delay staying above target for an interval means a standing queue. A queue
        that drains, or serves its freshest job quickly, resets the clock (a burst)."""
        now = self._clock() if now is None else now
        if left_texts == 0 or freshest_wait_s < self._target_s:
            self._above_since.pop(queue, None)
            return
        since = self._above_since.setdefault(queue, now)
        if not self.overloaded and now - since >= self._interval_s:
            self.overloaded = True
            self._last_refusal = now  # the interval without refusals starts now

    def admit(self, now: float | None = None) -> bool:
        """Whether a new classification request may enter. Called before its body is read."""
        if not self.settings.enabled or not self.overloaded:
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


# The worker's controller (one service instance per worker process), configured from the
# settings when the service starts; the door and the batchers of this process share it.
CONTROL = AdmissionControl()
