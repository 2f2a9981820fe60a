"""bench/cpu_share.py: per-period CPU attribution and the server's share within the objective,
on synthetic counter traces with a known answer."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench.cpu_share import (
    CpuSample,
    CpuSampler,
    describe,
    main_thread_cpu_s,
    objective_bucket,
    period_share,
)


def trace(server: float, load: float, other: float, steal: float, seconds: int) -> list[CpuSample]:
    """One sample a second, with constant core use per part, 100 answers a second of which
    90 within the objective, in 25 model calls (4 texts each) after 5 ms of queue each."""
    return [
        CpuSample(
            t=1000.0 + i,
            server_s=server * i,
            load_s=load * i,
            host_busy_s=(server + load + other) * i,
            steal_s=steal * i,
            answered=100.0 * i,
            within=90.0 * i,
            batch_texts=100.0 * i,
            batches=25.0 * i,
            queue_wait_s=0.5 * i,
            queued=100.0 * i,
        )
        for i in range(seconds + 1)
    ]


def test_period_share_splits_the_host_into_server_load_and_other() -> None:
    share = period_share(trace(1.2, 0.3, 0.25, 0.05, 60), 1000.0, 1060.0)
    assert share["server_cores"] == pytest.approx(1.2)
    assert share["load_cores"] == pytest.approx(0.3)
    assert share["other_cores"] == pytest.approx(0.25)
    assert share["steal_cores"] == pytest.approx(0.05)
    assert share["server_within"] == pytest.approx(0.9)
    assert share["texts_per_call"] == pytest.approx(4.0)
    assert share["queue_wait_ms"] == pytest.approx(5.0)


def test_period_share_reads_only_the_samples_around_its_period() -> None:
    # A busy neighbour in the second half only: the first half's period must not see it.
    quiet = trace(1.0, 0.2, 0.0, 0.0, 30)
    end = quiet[-1]
    busy = [
        CpuSample(
            t=end.t + i,
            server_s=end.server_s + 0.5 * i,
            load_s=end.load_s + 0.2 * i,
            host_busy_s=end.host_busy_s + 1.9 * i,
            steal_s=0.0,
            answered=end.answered + 50.0 * i,
            within=end.within + 10.0 * i,
        )
        for i in range(1, 31)
    ]
    samples = quiet + busy
    first = period_share(samples, 1000.0, 1030.0)
    second = period_share(samples, 1030.0, 1060.0)
    assert first["other_cores"] == pytest.approx(0.0)
    assert second["other_cores"] == pytest.approx(1.2)
    assert second["server_cores"] == pytest.approx(0.5)
    assert second["server_within"] == pytest.approx(0.2)


def dataclass_without_latency(sample: CpuSample) -> CpuSample:
    return CpuSample(sample.t, sample.server_s, sample.load_s, sample.host_busy_s, 0.0)


def test_period_share_without_latency_or_samples() -> None:
    samples = [dataclass_without_latency(s) for s in trace(1.0, 0.0, 0.0, 0.0, 10)]
    assert period_share(samples, 1000.0, 1010.0)["server_within"] is None
    assert period_share(samples[:1], 1000.0, 1010.0) == {}
    assert describe({}, 50) == "n/a"


def test_objective_bucket_is_the_first_edge_at_or_above_the_objective() -> None:
    hist = {"0.02": 1.0, "0.05": 2.0, "0.1": 3.0, "+Inf": 4.0}
    assert objective_bucket(hist, 0.05) == "0.05"
    assert objective_bucket(hist, 0.06) == "0.1"
    assert objective_bucket(hist, 5.0) == "+Inf"


METRICS = """\
smallcls_request_duration_seconds_bucket{le="0.02",model="m"} 5.0
smallcls_request_duration_seconds_bucket{le="0.05",model="m"} 9.0
smallcls_request_duration_seconds_bucket{le="0.1",model="m"} 10.0
smallcls_request_duration_seconds_bucket{le="+Inf",model="m"} 12.0
smallcls_request_duration_seconds_count{model="m"} 12.0
smallcls_request_duration_seconds_bucket{le="0.05",model="other"} 100.0
smallcls_request_duration_seconds_count{model="other"} 100.0
smallcls_batch_size_texts_sum{model="m"} 12.0
smallcls_batch_size_texts_count{model="m"} 4.0
smallcls_queue_wait_seconds_sum{model="m"} 0.06
smallcls_queue_wait_seconds_count{model="m"} 12.0
"""


def test_sampler_reads_the_servers_metrics_and_the_host() -> None:
    sampler = CpuSampler(lambda: 3.0, lambda: 1.0, lambda: METRICS, "m", objective_s=0.05)
    sample = sampler.sample()
    assert (sample.server_s, sample.load_s) == (3.0, 1.0)
    assert (sample.answered, sample.within) == (12.0, 9.0)  # the other model's are not summed
    assert (sample.batch_texts, sample.batches) == (12.0, 4.0)
    assert (sample.queue_wait_s, sample.queued) == (0.06, 12.0)
    assert sample.host_busy_s > 0
    blind = CpuSampler(lambda: 0.0, lambda: 0.0, lambda: None, "m", objective_s=0.05).sample()
    assert blind.answered is None and blind.within is None and blind.batches is None
    text = describe(period_share(trace(1.0, 0.5, 0.1, 0.0, 5), 1000.0, 1005.0), 50)
    assert text == (
        "server 1.00 + load 0.50 + other 0.10 cores (steal 0.00); "
        "server-side 90.0% <= 50 ms, 4.0 texts/call, queue 5.0 ms"
    )


def test_sampler_holds_a_counter_whose_process_ended() -> None:
    """Locust's CPU leaves the sum when it exits: the period's load must not go negative."""
    readings = iter([5.0, 8.0, 0.0])
    sampler = CpuSampler(lambda: 1.0, lambda: next(readings), lambda: None, "m", 0.05)
    loads = [sampler.sample().load_s for _ in range(3)]
    assert loads == [5.0, 8.0, 8.0]


SPIN = "def spin():\n    while True:\n        pass\n"
SPIN_IN_A_SIDE_THREAD = f"import threading\n{SPIN}threading.Thread(target=spin).start()\n"
SPIN_IN_THE_MAIN_THREAD = f"{SPIN}spin()\n"


def process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_main_thread_cpu_leaves_the_other_threads_out() -> None:
    """A worker's event loop is its main thread and its model runs in another: a process
    busy only in a side thread must show almost no main-thread CPU."""
    side = subprocess.Popen([sys.executable, "-c", SPIN_IN_A_SIDE_THREAD])
    main = subprocess.Popen([sys.executable, "-c", SPIN_IN_THE_MAIN_THREAD])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            side_total, main_total = (process_cpu_s(p.pid) for p in (side, main))
            if min(side_total, main_total) >= 1.0:
                break
            time.sleep(0.2)
        side_main, main_main = main_thread_cpu_s([side.pid]), main_thread_cpu_s([main.pid])
        assert min(side_total, main_total) >= 1.0, (side_total, main_total)
        assert side_main < 0.3 * side_total, (side_main, side_total)  # interpreter start-up
        assert main_main > 0.7 * main_total, (main_main, main_total)
        both = main_thread_cpu_s([side.pid, main.pid])
        assert side_main + main_main <= both <= side_main + main_main + 1.0
    finally:
        for proc in (side, main):
            proc.kill()
            proc.wait()
    assert main_thread_cpu_s([main.pid]) == 0.0  # a process that is gone counts 0
