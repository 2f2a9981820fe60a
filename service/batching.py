"""Dynamic batching for one model: texts from concurrent requests share one onnxruntime call.

A batch starts as soon as one of the model's lanes is free (one by default; `lanes` runs
that many batches at once, each in its own thread); texts that arrive while every lane is
busy wait and form the next batch, up to `max_batch_size` texts (and, with `max_batch_ms`,
no more than the measured model time per text lets finish within that budget). At low load
a request runs alone and waits for nothing; under load batches grow by themselves. This
runs in the API process, next to the HTTP server: no second process and no second HTTP hop
per request (on 2 cores both cost as much CPU as MiniLM's inference itself).

Overload is refused at the door by the worker's admission control (service/admission.py),
which every batcher reports to; while it says the worker is overloaded, batches take the
freshest requests first (adaptive LIFO). Two backstops stay: a request that would overfill
the queue is refused at once, and a text that waited longer than `max_latency_ms` is refused
before it uses the model.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from service.admission import AdmissionControl
from service.settings import BatchingSettings

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The model's queue is full or too slow: answer 503 and let the client retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "queue_full" or "queue_timeout", a metrics label


class Retired(Exception):
    """This model version was replaced by a reload: resolve the model name again."""


class ModelFailed(RuntimeError):
    """The model raised on this request's texts even when run apart from the rest of its batch
    (the original error is its cause); `text_index`: the request's text it raised on alone,
    None when no single text does. The batcher goes on with the next batch."""

    def __init__(self, model: str, error: Exception, text_index: int | None = None) -> None:
        where = "its texts" if text_index is None else f"text {text_index} of the request"
        super().__init__(f"model {model!r} failed on {where}: {type(error).__name__}: {error}")
        self.model = model
        self.text_index = text_index
        self.field = "model"  # where the answer points; the service sets texts[i] when known


class InternalError(ModelFailed):
    """The service's own code failed around the model (a bug): answered 500 like a model
    failure, logged with its traceback and counted apart (reason "internal")."""

    def __init__(self, model: str, error: Exception) -> None:
        RuntimeError.__init__(
            self, f"the service failed answering for model {model!r}: {type(error).__name__}"
        )
        self.model = model
        self.text_index = None
        self.field = "service"


def _lower_priority(nice: int) -> None:
    """Run in the model thread when it starts: Linux keeps a niceness per thread, so this
    thread yields the CPU to the event loop's thread, which parses, admits and refuses."""
    if nice and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:  # not permitted: serve anyway, at the same priority
            logger.warning("could not lower the model thread's priority: %s", exc)


class BatchTimeLimit:
    """Texts per batch such that one batch's model time stays within a budget.

    Every request that arrives while a batch runs waits for the whole batch before its own
    starts, so the batch's run time, not its size, is what the latency objective feels. The
    same batch size is a different wait on every CPU and model: 16 MiniLM-L6 int8 texts take
    about 40 ms on a 2-core AVX-512 VNNI Xeon and 105 ms on a 2-core AMD EPYC, twice a 50 ms
    objective by themselves. The limit is the budget over a moving average of the model time
    per text of recent batches. Per text, a small batch costs more than a large one (the
    call's fixed cost is shared by fewer texts), so a limit set from small batches is low;
    the batches it allows then measure a lower cost and the limit rises. With a batch of n
    texts taking a + b*n seconds this settles where a + b*n = budget: the largest batch
    that fits, whatever load the estimate was first measured at."""

    def __init__(self, budget_s: float, most: int) -> None:
        self.budget_s = budget_s
        self.most = most  # max_batch_size: the limit never exceeds it
        self.seconds_per_text = 0.0  # 0: nothing measured yet

    @property
    def limit(self) -> int:
        if not self.budget_s or not self.seconds_per_text:
            return self.most
        return max(1, min(self.most, int(self.budget_s / self.seconds_per_text)))

    def observe(self, texts: int, seconds: float) -> None:
        """A batch of `texts` ran in `seconds` of model time."""
        if texts <= 0 or seconds <= 0:
            return
        per_text = seconds / texts
        if not self.seconds_per_text:
            self.seconds_per_text = per_text
        else:  # recent batches weigh most: the cost per text follows the batch sizes run
            self.seconds_per_text += 0.2 * (per_text - self.seconds_per_text)


@dataclasses.dataclass(eq=False)
class _Job:
    texts: Sequence[str]
    future: asyncio.Future[Rows]
    enqueued: float  # the batcher's clock: time.perf_counter() but in tests
    longest: int = 0  # tokens of its longest text (after truncation); 0: not counted


# What a model returns for a batch: one array, or a tuple of arrays, with one row per text.
Rows = np.ndarray | tuple[np.ndarray, ...]


class BatchObserver(Protocol):
    """What the batcher reports, for metrics."""

    def observe_batch(self, model: str, size: int, waits: list[float]) -> None:
        """A batch of `size` texts started; `waits`: the seconds each of its jobs queued."""

    def queue_changed(self, model: str, delta: int) -> None:
        """Texts waiting in the model's queue went up or down by `delta`."""

    def batch_ran(self, model: str, size: int, seconds: float, cpu_seconds: float) -> None:
        """A batch of `size` texts took `seconds` in the model's thread, `cpu_seconds` of
        them on a CPU: the rest, the thread was waiting for a core (or its intra-op threads)."""


def _timed(run: Callable[[list[str]], Rows], texts: list[str]) -> tuple[Rows, float, float]:
    """`run(texts)` with its wall time and this thread's CPU time. With one intra-op thread
    onnxruntime runs the graph in the calling thread, so its CPU is this thread's."""
    wall, cpu = time.perf_counter(), time.thread_time()
    rows = run(texts)
    return rows, time.perf_counter() - wall, time.thread_time() - cpu


class Batcher:
    """One queue per model version, served by `settings.lanes` lanes: each takes the next
    batch when its own model call ends, in its own thread. Use from one event loop."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[str]], Rows],
        settings: BatchingSettings,
        observe: BatchObserver | None = None,
        admission: AdmissionControl | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.name = name
        self._clock = clock  # seconds; tests pass a clock the model advances
        self.settings = settings
        self._run = run
        self._observe = observe
        self._admission = admission
        if admission is not None:
            admission.serves_lanes(settings.lanes)
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self.time_limit = BatchTimeLimit(settings.max_batch_ms / 1000, settings.max_batch_size)
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lanes_running = 0
        # One thread per lane (settings.lanes, 1 by default: one batch at a time, so ORT's
        # intra-op threads are not oversubscribed by concurrent batches of the same model).
        self._executor = concurrent.futures.ThreadPoolExecutor(
            settings.lanes,
            thread_name_prefix=name,
            initializer=_lower_priority,
            initargs=(settings.thread_nice,),
        )
        self.closed = False

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def submit(self, texts: Sequence[str], longest: int = 0) -> Rows:
        """The rows of `run`'s output for these texts. `longest`: tokens of the longest text
        as the model will read it, which `max_batch_tokens` needs. Raises Overloaded,
        Retired, or ModelFailed (caused by what the model raised)."""
        if self.closed:
            raise Retired(self.name)
        limit = self.settings.max_queue
        if self._queued_texts and self._queued_texts + len(texts) > limit:
            raise Overloaded(
                "queue_full",
                f"model {self.name!r} has {self._queued_texts} texts queued (limit {limit}): "
                "retry shortly",
            )
        loop = asyncio.get_running_loop()
        if not self._tasks:
            self._lanes_running = self.settings.lanes
            self._tasks = [
                loop.create_task(self._loop(), name=f"batcher-{self.name}-{lane}")
                for lane in range(self.settings.lanes)
            ]
        job = _Job(texts, loop.create_future(), self._clock(), longest)
        self._jobs.append(job)
        self._queued_texts += len(texts)
        if self._observe is not None:
            self._observe.queue_changed(self.name, len(texts))
        self._wakeup.set()
        return await job.future

    def close(self) -> None:
        """Refuse new texts; the queued ones are still answered, then the thread ends."""
        self.closed = True
        if self._admission is not None:
            self._admission.forget(self)
        self._wakeup.set()
        if not self._tasks:
            self._executor.shutdown(wait=False)

    def _take_expired(self, enqueued_before: float) -> list[_Job]:
        """The oldest jobs, queued before `enqueued_before`, out of the queue."""
        expired = []
        while self._jobs and self._jobs[0].enqueued < enqueued_before:
            job = self._jobs.popleft()
            self._queued_texts -= len(job.texts)
            if self._observe is not None:
                self._observe.queue_changed(self.name, -len(job.texts))
            if not job.future.done():
                expired.append(job)
        return expired

    def _take_batch(self, freshest_first: bool = False) -> list[_Job]:
        """Jobs for one batch, oldest first, or with `freshest_first` newest first (adaptive
        LIFO under overload: a fresh request can still be answered in time)."""
        jobs: list[_Job] = []
        size = 0
        longest = 0  # tokens of the batch's longest text: every row is padded to it
        budget = self.settings.max_batch_tokens
        most = self.time_limit.limit
        taken = 0  # texts leaving the queue, cancelled jobs' included
        while self._jobs:
            job = self._jobs[-1] if freshest_first else self._jobs[0]
            if jobs and size + len(job.texts) > most:
                break
            # Padded tokens bound the batch as well (TEI's max_batch_tokens): a few long texts
            # would otherwise make a full batch of rows that long, and everyone in it wait.
            padded = (size + len(job.texts)) * max(longest, job.longest)
            if jobs and budget and padded > budget:
                break
            if freshest_first:
                self._jobs.pop()
            else:
                self._jobs.popleft()
            self._queued_texts -= len(job.texts)
            taken += len(job.texts)
            if job.future.done():  # the client went away (request cancelled)
                continue
            jobs.append(job)
            size += len(job.texts)
            longest = max(longest, job.longest)
        if self._observe is not None and taken:
            self._observe.queue_changed(self.name, -taken)
        return jobs

    def _refuse_late(self, jobs: list[_Job], enqueued_before: float, now: float) -> list[_Job]:
        """`jobs` queued since `enqueued_before`; the older ones are answered 503 now."""
        live: list[_Job] = []
        for job in jobs:
            if job.enqueued < enqueued_before:
                job.future.set_exception(
                    Overloaded(
                        "queue_timeout",
                        f"model {self.name!r} is overloaded: the text waited "
                        f"{now - job.enqueued:.2f} s in its queue; retry shortly",
                    )
                )
            else:
                live.append(job)
        return live

    async def _run_apart(self, jobs: list[_Job]) -> None:
        """After a failed batch, each request alone: a text the model cannot take fails only
        its own request, which is told which text it was; the others get their answers. When
        nothing passes alone, the model itself is failing, and no text is blamed."""
        loop = asyncio.get_running_loop()
        failures: list[tuple[_Job, Exception]] = []
        for job in jobs:
            if job.future.done():
                continue
            try:
                rows = await loop.run_in_executor(self._executor, self._run, list(job.texts))
            except Exception as exc:
                failures.append((job, exc))
            else:
                if not job.future.done():
                    job.future.set_result(rows)
        # A lone text that fails alone is to blame only if other requests passed.
        some_passed = len(failures) < len(jobs)
        for job, exc in failures:
            if len(job.texts) > 1:
                index = await self._failing_text(job.texts)
            else:
                index = 0 if some_passed else None
            logger.error("model %r failed on a request (text %s): %r", self.name, index, exc)
            failed = ModelFailed(self.name, exc, index)
            failed.__cause__ = exc
            if not job.future.done():
                job.future.set_exception(failed)

    async def _failing_text(self, texts: Sequence[str]) -> int | None:
        """The first text the model raises on alone, where others pass alone; None when every
        text passes alone (only their combination fails) or every text fails."""
        loop = asyncio.get_running_loop()
        failing = []
        for index, text in enumerate(texts):
            try:
                await loop.run_in_executor(self._executor, self._run, [text])
            except Exception:
                failing.append(index)
        return failing[0] if failing and len(failing) < len(texts) else None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.settings.batch_wait_ms / 1000
        max_queue_s = self.settings.max_latency_ms / 1000
        try:
            while True:
                while not self._jobs:
                    if self.closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if wait_s and self._queued_texts < self.time_limit.limit:
                    await asyncio.sleep(wait_s)  # let a batch fill (tuned per model)
                overloaded = self._admission is not None and self._admission.overloaded
                now = self._clock()
                # Freshest first leaves the oldest behind: they are refused as soon as they
                # are too old, not when (if ever) a batch takes them; too old is much sooner
                # under overload (the admission's short queue timeout).
                max_wait_s = max_queue_s
                if overloaded:
                    short = self._admission.settings.overload_max_wait_ms / 1000
                    max_wait_s = min(max_queue_s, short)
                expired = self._take_expired(now - max_wait_s) if overloaded else []
                jobs = self._take_batch(freshest_first=overloaded)
                if jobs and self._admission is not None:
                    freshest = max(job.enqueued for job in jobs)
                    self._admission.batch_started(self, now - freshest, self._queued_texts, now)
                live = self._refuse_late([*expired, *jobs], now - max_wait_s, now)
                if not live:
                    continue
                texts = [t for job in live for t in job.texts]
                if self._observe is not None:
                    waits = [now - job.enqueued for job in live]
                    self._observe.observe_batch(self.name, len(texts), waits)
                if self._admission is not None:
                    self._admission.batch_running(len(live))
                started = self._clock()
                try:
                    rows, ran_s, cpu_s = await loop.run_in_executor(
                        self._executor, _timed, self._run, texts
                    )
                except Exception:  # the model failed: find whose texts, keep serving
                    logger.exception("model %r failed on a batch of %d", self.name, len(texts))
                    await self._run_apart(live)
                    continue
                finally:
                    took = self._clock() - started
                    if self._admission is not None:
                        self._admission.batch_done(
                            len(live), took, half_full=2 * len(texts) >= self.time_limit.limit
                        )
                self.time_limit.observe(len(texts), took)
                if self._observe is not None:
                    self._observe.batch_ran(self.name, len(texts), ran_s, cpu_s)
                start = 0
                for job in live:
                    end = start + len(job.texts)
                    if not job.future.done():
                        job.future.set_result(
                            tuple(a[start:end] for a in rows)
                            if isinstance(rows, tuple)
                            else rows[start:end]
                        )
                    start = end
        finally:
            self._lanes_running -= 1
            if not self._lanes_running:  # the last lane out ends the threads
                self._executor.shutdown(wait=False)
