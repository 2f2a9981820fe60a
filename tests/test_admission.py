"""Admission control on synthetic arrival traces with known answers, the door that refuses
before the body is read, and the batcher's freshest-first order under overload."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random

import numpy as np
import pytest

from service import admission, door
from service.admission import AdmissionControl, AdmissionSettings
from service.batching import Batcher
from service.settings import BatchingSettings, Settings, admission_from_env
from tests.test_batching import GatedModel, _until

BATCH_S = 0.020  # one batch of up to MAX_BATCH texts takes this long in the simulation
MAX_BATCH = 16
CAPACITY = MAX_BATCH / BATCH_S  # texts per second with full batches


class FakeQueue:
    """Stands for a batcher: the controller keys its per-queue state by identity."""


@dataclasses.dataclass
class Outcome:
    admitted: list[float]  # arrival times of admitted requests
    refused: list[float]
    waits: list[tuple[float, float]]  # (arrival, queue wait) of each admitted request
    overloaded_at: float | None


def simulate(
    arrivals: list[float],
    settings: AdmissionSettings | None = None,
    max_batch: int = MAX_BATCH,
    batch_s=lambda n: BATCH_S,
) -> Outcome:
    """A one-model batcher in virtual time: one text per request, a batch takes everything
    queued up to `max_batch` (oldest first, freshest first while overloaded) and runs
    `batch_s(texts)`; the controller is told what the door and the real batcher tell it."""
    control = AdmissionControl(settings or AdmissionSettings())
    queue = FakeQueue()
    waiting: list[float] = []  # arrival times, oldest first
    running: list[float] = []
    batch_end = float("inf")
    out = Outcome([], [], [], None)

    def start_batch(now: float) -> float:
        nonlocal waiting, running
        if control.overloaded:
            running, waiting = waiting[-max_batch:], waiting[:-max_batch]
        else:
            running, waiting = waiting[:max_batch], waiting[max_batch:]
        control.batch_started(queue, now - max(running), len(waiting), now)
        control.batch_running(len(running))
        if control.overloaded and out.overloaded_at is None:
            out.overloaded_at = now
        out.waits.extend((t, now - t) for t in running)
        return now + batch_s(len(running))

    def batch_done() -> None:
        took = batch_s(len(running))
        control.batch_done(len(running), took, half_full=2 * len(running) >= max_batch)

    for t in sorted(arrivals):
        while batch_end <= t:  # batches that end before this arrival
            batch_done()
            for _ in running:
                control.left()
            running = []
            batch_end = start_batch(batch_end) if waiting else float("inf")
        if not control.admit(t):
            out.refused.append(t)
            continue
        control.entered()
        waiting.append(t)
        out.admitted.append(t)
        if not running:
            batch_end = start_batch(t)
    while running:  # serve what is left
        batch_done()
        for _ in running:
            control.left()
        running = []
        batch_end = start_batch(batch_end) if waiting else float("inf")
    return out


def poisson(rate: float, seconds: float, seed: int = 0, start: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    times, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= start + seconds:
            return times
        times.append(t)


def test_poisson_arrivals_at_70_percent_of_capacity_are_all_admitted() -> None:
    out = simulate(poisson(0.7 * CAPACITY, 60, seed=1))
    assert out.refused == [] and out.overloaded_at is None
    assert len(out.admitted) > 0.9 * 0.7 * CAPACITY * 60


def test_a_burst_queues_instead_of_being_refused() -> None:
    # 3x capacity for 30 ms on top of 50% load: about 60 ms of extra work, a backlog that
    # drains within the interval.
    trace = poisson(0.5 * CAPACITY, 10, seed=2) + poisson(3 * CAPACITY, 0.03, seed=3, start=5)
    out = simulate(trace)
    assert out.refused == []
    assert max(w for _, w in out.waits) > AdmissionSettings().target_ms / 1000  # it queued


def test_sustained_overload_is_refused_within_the_interval_and_admitted_waits_stay_short() -> None:
    settings = AdmissionSettings()
    trace = poisson(3 * CAPACITY, 10, seed=4)
    out = simulate(trace, settings)
    assert out.overloaded_at is not None
    # The queue stands once waits pass the target beyond the batch a request waits out
    # anyway; an interval later it is refused.
    standing = settings.target_ms / 1000 + BATCH_S
    began = min(trace)
    assert out.overloaded_at - began <= settings.interval_ms / 1000 + standing + 2 * BATCH_S
    share = len(out.refused) / len(trace)
    assert 0.55 < share < 0.75  # about 2/3 of 3x the capacity is refused
    late = [w for t, w in out.waits if t > 1.0]
    assert np.percentile(late, 99) <= settings.target_ms / 1000 + 2 * BATCH_S
    # Without the controller the same trace queues for seconds.
    unbounded = simulate(trace, AdmissionSettings(enabled=False))
    assert unbounded.refused == [] and max(w for _, w in unbounded.waits) > 5


def test_refusals_stop_within_an_interval_after_the_load_drops() -> None:
    trace = poisson(3 * CAPACITY, 5, seed=5) + poisson(0.5 * CAPACITY, 10, seed=6, start=5)
    out = simulate(trace)
    assert out.refused and max(out.refused) < 5 + AdmissionSettings().interval_ms / 1000
    assert [t for t in out.refused if t > 5.2] == []


def test_small_batches_after_an_overload_do_not_keep_it_refusing() -> None:
    """Batches of 8 whose call has a large fixed cost (8 ms + 0.7 ms a text): at half load
    after an overload the batches are small and cost more per request. Priced by them, the
    short queue of a moderate load looks over target and the door kept refusing to the end
    of the trace (1,001 refusals after the drop); priced by the half-full batches of the
    overload, it admits again within an interval."""
    capacity = 8 / (0.008 + 8 * 0.0007)
    trace = poisson(3 * capacity, 5, seed=7) + poisson(0.5 * capacity, 10, seed=8, start=5)
    settings = AdmissionSettings(target_ms=10)
    out = simulate(trace, settings, max_batch=8, batch_s=lambda n: 0.008 + 0.0007 * n)
    assert out.refused and min(out.refused) < 1  # the overload was refused...
    assert [t for t in out.refused if t > 5 + 2 * settings.interval_ms / 1000] == []  # ...then not


# A CPU on which batching saves nothing: 10.5 ms a text at any batch size (MiniLM-L6 int8 on
# a 2-core AVX2 machine without VNNI), batches of up to 2 texts: one batch is longer than the
# target.
SLOW_TEXT_S = 0.0105


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_wait_for_the_batch_already_running_is_not_a_standing_queue(seed) -> None:
    """A request that arrives while a batch runs waits for it, however short the queue. With
    batches longer than the target, each such wait counted as over target, Poisson runs of
    busy batches looked like a standing queue, and 70% load was refused: 5, 112 and 14 of
    these traces' requests."""
    capacity = 2 / (2 * SLOW_TEXT_S)
    settings = AdmissionSettings(target_ms=10, interval_ms=300)
    trace = poisson(0.7 * capacity, 120, seed=seed)
    out = simulate(trace, settings, max_batch=2, batch_s=lambda n: SLOW_TEXT_S * n)
    assert out.refused == [] and out.overloaded_at is None
    # Sustained overload on the same server is still refused within about an interval.
    heavy = poisson(3 * capacity, 10, seed=10 + seed)
    out = simulate(heavy, settings, max_batch=2, batch_s=lambda n: SLOW_TEXT_S * n)
    assert out.overloaded_at is not None and out.overloaded_at < 0.5
    assert 0.55 < len(out.refused) / len(heavy) < 0.75


def test_a_long_batch_excuses_no_wait_longer_than_overload_refuses() -> None:
    """Batches of 100 ms (16 texts on a slow CPU), each leaving a queue whose freshest text
    waited 70 ms: over the 50 ms that overload refuses, so a standing queue, however long
    the batch before it ran."""
    settings = AdmissionSettings(target_ms=10, interval_ms=100, overload_max_wait_ms=50)
    control = AdmissionControl(settings)
    queue = FakeQueue()
    for i in range(4):
        control.batch_started(queue, 0.07, 16, now=0.1 * i)
        control.batch_running(16)
        control.batch_done(16, 0.1)
    assert control.overloaded
    # A wait within the batch that ran before and the overload's limit is still excused.
    calm = AdmissionControl(settings)
    for i in range(4):
        calm.batch_started(queue, 0.04, 16, now=0.1 * i)
        calm.batch_running(16)
        calm.batch_done(16, 0.1)
    assert not calm.overloaded


def test_an_idle_gap_does_not_count_as_a_standing_queue() -> None:
    control = AdmissionControl(AdmissionSettings(target_ms=10, interval_ms=100))
    queue = FakeQueue()
    control.batch_started(queue, 0.05, 3, now=0.0)  # standing for a moment
    control.batch_started(queue, 0.05, 0, now=0.01)  # then drained
    control.batch_started(queue, 0.05, 3, now=1.0)  # a new burst, a second later
    control.batch_started(queue, 0.05, 3, now=1.05)
    assert not control.overloaded
    control.batch_started(queue, 0.05, 3, now=1.11)
    assert control.overloaded


def test_settings_read_from_the_environment() -> None:
    got = admission_from_env({"SMALLCLS_QUEUE_TARGET_MS": "30", "SMALLCLS_ADMISSION": "false"})
    assert got == AdmissionSettings(target_ms=30, interval_ms=100, enabled=False)
    with pytest.raises(ValueError, match="SMALLCLS_QUEUE_INTERVAL_MS"):
        admission_from_env({"SMALLCLS_QUEUE_INTERVAL_MS": "0"})
    got = admission_from_env({"SMALLCLS_OVERLOAD_MAX_WAIT_MS": "40"})
    assert got.overload_max_wait_ms == 40
    with pytest.raises(ValueError, match="SMALLCLS_OVERLOAD_MAX_WAIT_MS"):
        admission_from_env({"SMALLCLS_OVERLOAD_MAX_WAIT_MS": "0"})
    settings = Settings.from_env({"SMALLCLS_MODELS": "/m", "SMALLCLS_QUEUE_TARGET_MS": "15"})
    assert settings.admission.target_ms == 15


# ---- the door ---------------------------------------------------------------------------


def _asgi_call(app, path: str, method: str = "POST") -> tuple[list[dict], list[str]]:
    sent: list[dict] = []
    received: list[str] = []

    async def receive() -> dict:
        received.append("body")
        return {"type": "http.request", "body": b'{"texts": "hi"}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent, received


class InnerApp:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def overloaded(monkeypatch):
    control = AdmissionControl(AdmissionSettings(target_ms=10))
    control.in_flight, control.seconds_per_request = 100, 0.001  # 100 ms of work ahead
    control.overloaded = True
    monkeypatch.setattr(admission, "CONTROL", control)
    return control


def test_the_door_refuses_overload_without_reading_the_body(overloaded) -> None:
    inner = InnerApp()
    sent, received = _asgi_call(door.Door(inner), "/classify")
    assert inner.calls == 0 and received == []
    start, body = sent
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["field"] == "model"
    # Text Embeddings Inference's routes answer its 429 and error body.
    sent, _ = _asgi_call(door.Door(inner), "/predict")
    assert sent[0]["status"] == 429
    assert json.loads(sent[1]["body"])["error_type"] == "Overloaded"


def test_the_door_lets_probes_and_admin_through_and_admits_when_the_queue_is_short(
    overloaded,
) -> None:
    control = overloaded
    inner = InnerApp()
    for path, method in (("/readyz", "GET"), ("/metrics", "GET"), ("/models", "GET")):
        sent, _ = _asgi_call(door.Door(inner), path, method)
        assert sent[0]["status"] == 200
    control.in_flight = 2  # 2 ms of work ahead: under the 10 ms target
    sent, received = _asgi_call(door.Door(inner), "/classify")
    assert sent[0]["status"] == 200 and received == ["body"]
    assert inner.calls == 4 and control.refused == 0
    assert control.in_flight == 2  # the admitted request was counted in, then out


def test_install_puts_the_door_outside_the_service_app() -> None:
    import bentoml

    @bentoml.service
    class Echo:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x

    door.install(Echo)
    assert isinstance(Echo, bentoml.Service)
    assert isinstance(Echo.to_asgi(), door.Door)


# ---- the batcher under overload -----------------------------------------------------------


def test_batches_take_the_freshest_requests_first_while_overloaded() -> None:
    async def main() -> None:
        control = AdmissionControl()
        model = GatedModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=2), admission=control)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        queued = [asyncio.ensure_future(batcher.submit([t])) for t in ("b", "c", "d")]
        await asyncio.sleep(0.01)
        control.overloaded = True
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert model.calls == [["a"], ["d", "c"], ["b"]]
        assert control.seconds_per_request > 0 and control.running == 0  # told every batch
        batcher.close()

    asyncio.run(main())


def test_batches_stay_oldest_first_when_not_overloaded() -> None:
    async def main() -> None:
        model = GatedModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=2), admission=None)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        queued = [asyncio.ensure_future(batcher.submit([t])) for t in ("b", "c", "d")]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert model.calls == [["a"], ["b", "c"], ["d"]]
        batcher.close()

    asyncio.run(main())


def test_the_model_thread_runs_at_the_niceness_asked_for() -> None:
    import os
    import threading

    seen: list[int] = []

    def model(texts: list[str]) -> np.ndarray:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return np.zeros((len(texts), 2), dtype=np.float32)

    async def main() -> None:
        batcher = Batcher("m", model, BatchingSettings(thread_nice=7))
        await batcher.submit(["a"])
        batcher.close()

    asyncio.run(main())
    assert seen == [7]  # the model thread only: the caller's stays where it was
    with pytest.raises(ValueError, match="thread_nice"):
        BatchingSettings(thread_nice=20)


def test_gc_pauses_are_measured_and_reported_outside_the_collector() -> None:
    import gc

    import prometheus_client

    from service import gc_pauses

    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram(
        "pause_seconds", "test", ["generation"], registry=registry
    )
    gc_pauses.watch()
    gc_pauses.watch()  # once per process, however often asked
    assert sum(type(cb).__name__ == "_Watch" for cb in gc.callbacks) == 1
    gc.collect()
    assert registry.get_sample_value("pause_seconds_count", {"generation": "2"}) is None
    gc_pauses.report(histogram)  # only now, from the caller
    assert registry.get_sample_value("pause_seconds_count", {"generation": "2"}) >= 1


class StepModel:
    """Each call blocks until its own gate opens."""

    def __init__(self) -> None:
        import threading

        self.calls: list[list[str]] = []
        self.gates = [threading.Event() for _ in range(4)]

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.gates[len(self.calls) - 1].wait(5)
        return np.zeros((len(texts), 2), dtype=np.float32)


def _left_behind(settings: BatchingSettings, control: AdmissionControl, overloaded: bool):
    """One request left 80 ms in the queue while a batch runs, then two fresh ones; returns
    the old request's task, whether it was answered while the next batch ran, and the
    model's calls once all are done."""

    async def main():
        model = StepModel()
        batcher = Batcher("m", model, settings, admission=control)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        old = asyncio.ensure_future(batcher.submit(["b"]))
        await asyncio.sleep(0.08)
        fresh = [asyncio.ensure_future(batcher.submit([t])) for t in ("c", "d")]
        await asyncio.sleep(0.01)
        control.overloaded = overloaded
        model.gates[0].set()
        await _until(lambda: len(model.calls) == 2)  # the next batch is running...
        await asyncio.sleep(0.02)
        early = old.done()  # ...and the old request may already be answered
        for gate in model.gates[1:]:
            gate.set()
        await asyncio.gather(first, *fresh, old, return_exceptions=True)
        assert batcher.queued_texts == 0
        batcher.close()
        return old, early, model.calls

    return asyncio.run(main())


def test_freshest_first_refuses_the_old_ones_left_behind_once_too_old() -> None:
    from service.batching import Overloaded

    settings = BatchingSettings(max_batch_size=2, max_latency_ms=50)
    old, early, calls = _left_behind(settings, AdmissionControl(), overloaded=True)
    with pytest.raises(Overloaded):
        old.result()
    assert early and calls == [["a"], ["d", "c"]]


def test_under_overload_the_queue_timeout_is_the_short_one() -> None:
    """max_latency_ms allows a second, but while overloaded a text queued longer than
    overload_max_wait_ms is refused; out of overload the same wait is answered."""
    from service.batching import Overloaded

    settings = BatchingSettings(max_batch_size=2, max_latency_ms=1000)
    short = AdmissionSettings(overload_max_wait_ms=50)
    old, early, calls = _left_behind(settings, AdmissionControl(short), overloaded=True)
    with pytest.raises(Overloaded, match="waited"):
        old.result()
    assert early and calls == [["a"], ["d", "c"]]
    old, _, calls = _left_behind(settings, AdmissionControl(short), overloaded=False)
    assert old.result() is not None and calls == [["a"], ["b", "c"], ["d"]]
    long = AdmissionSettings(overload_max_wait_ms=500)
    old, early, calls = _left_behind(settings, AdmissionControl(long), overloaded=True)
    assert old.result() is not None and not early and calls == [["a"], ["d", "c"], ["b"]]


# ---- the door's deadline ------------------------------------------------------------------


def test_install_takes_bentos_timeout_over_into_the_door() -> None:
    import bentoml

    @bentoml.service(traffic={"timeout": 7})
    class Slow:
        @bentoml.api
        def echo(self, x: int) -> int:
            return x

    door.install(Slow)
    app = Slow.to_asgi()
    assert isinstance(app, door.Door) and app.timeout_s == 7.0
    names = [m.cls.__name__ for m in app.app.user_middleware]
    assert "TimeoutMiddleware" not in names and "OpenTelemetryMiddleware" in names


def test_a_request_over_the_deadline_is_answered_504() -> None:
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(5)

    sent, _ = _asgi_call(door.Door(slow, timeout_s=0.05), "/models", "GET")
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


def test_nothing_of_a_finished_request_outlives_it() -> None:
    """The deadline timer holds no reference to the request's context: BentoML's own kept
    each request's context (with the trace span its outer middleware had set) alive for the
    whole timeout."""
    import contextvars
    import gc
    import weakref

    current = contextvars.ContextVar("current")
    refs: list[weakref.ref] = []

    class RequestState:
        pass

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def ignore(message: dict) -> None:
        pass

    gate = door.Door(app, timeout_s=60)

    async def request() -> None:
        state = RequestState()  # what an outer layer puts in the request's context
        refs.append(weakref.ref(state))
        current.set(state)
        await gate({"type": "http", "path": "/models", "method": "GET"}, None, ignore)

    async def main() -> None:
        # A live timer due first (as a server has: keep-alive timers): cancelled timers
        # behind it stay in the loop's heap instead of being dropped at once.
        asyncio.get_running_loop().call_later(30, lambda: None)
        for _ in range(20):  # each request in its own task, as uvicorn runs them
            await asyncio.create_task(request())
        await asyncio.sleep(0)  # the loop lets go of the last finished task
        gc.collect()
        alive = [i for i, ref in enumerate(refs) if ref() is not None]
        assert len(refs) == 20 and alive == []

    asyncio.run(main())


def test_the_work_ahead_is_shared_by_the_lanes_that_serve_it() -> None:
    """Four requests ahead at 8 ms each are 32 ms of work for one lane, over a 20 ms target;
    two lanes run them in 16 ms, under it."""

    def overloaded_control(lanes: int) -> AdmissionControl:
        control = AdmissionControl(AdmissionSettings(target_ms=20.0), clock=lambda: 0.0)
        Batcher("m", GatedModel(), BatchingSettings(lanes=lanes), admission=control)
        control.batch_running(1)
        control.batch_done(1, 0.008)
        control._enter_overload(0.0)
        for _ in range(4):
            control.entered()
        return control

    assert overloaded_control(lanes=1).lanes == 1
    assert not overloaded_control(lanes=1).admit()
    assert overloaded_control(lanes=2).admit()
