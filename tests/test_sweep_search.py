"""The rate search on synthetic latency curves (known answers), core planning and pinning, and
the sweep summary's new fields. No timing: the curves are functions, not measurements."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.cores import pinned_tree, plan_cores
from loadtests.search import first_guess, open_loop_users, search_rate
from loadtests.sweep import SWEEP_NAME, SweepSummary

SLO_MS = 50.0


def queue_p95(capacity: float, service_ms: float):
    """p95 of an M/M/1-like queue: service time / (1 - utilisation), infinite when saturated.
    The rate where it crosses the SLO is known: capacity * (1 - service_ms / SLO)."""

    def p95(rate: float) -> float:
        load = rate / capacity
        return float("inf") if load >= 1 else service_ms / (1 - load)

    return p95


@pytest.mark.parametrize(
    ("capacity", "service_ms", "guess"),
    [(500.0, 10.0, 425.0), (500.0, 10.0, 60.0), (40.0, 30.0, 34.0), (1000.0, 2.0, 5000.0)],
)
def test_search_finds_the_highest_rate_under_the_slo(
    capacity: float, service_ms: float, guess: float
) -> None:
    p95 = queue_p95(capacity, service_ms)
    answer = capacity * (1 - service_ms / SLO_MS)
    calls: list[float] = []

    def passes(rate: float) -> bool:
        calls.append(rate)
        return p95(rate) <= SLO_MS

    result = search_rate(passes, guess=guess, points=20, rel_tol=0.02)
    assert result.best_rate is not None
    assert result.best_rate <= answer  # a rate that passed, never one past the threshold
    assert result.best_rate >= answer / 1.02  # and within the tolerance of it
    low, high = result.bracket
    assert low == result.best_rate and high is not None and high > answer
    assert result.resolution is not None and result.resolution <= 0.02
    assert [t.rate for t in result.trials] == calls
    assert result.stop_reason == "bracket within 2%"


def test_search_stops_when_the_points_run_out_and_keeps_the_best_pass() -> None:
    p95 = queue_p95(500.0, 10.0)  # answer: 400 requests/s
    result = search_rate(lambda r: p95(r) <= SLO_MS, guess=340.0, points=3, rel_tol=0.01)
    # 340 passes, 425 fails, 382.5 passes: three points, bracket (382.5, 425).
    assert [t.rate for t in result.trials] == pytest.approx([340.0, 425.0, 382.5])
    assert [t.passed for t in result.trials] == [True, False, True]
    assert result.best_rate == pytest.approx(382.5)
    assert result.stop_reason == "used all 3 points"


def test_search_gives_up_below_the_minimum_rate() -> None:
    result = search_rate(lambda r: False, guess=2.0, points=20, min_rate=0.5)
    assert result.best_rate is None and result.bracket[0] is None
    assert "no rate down to 0.5" in result.stop_reason
    assert len(result.trials) < 20


def test_search_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="growth > 1"):
        search_rate(lambda r: True, guess=10.0, points=3, growth=1.0)
    with pytest.raises(ValueError, match="points >= 1"):
        search_rate(lambda r: True, guess=10.0, points=0)


def test_first_guess_scales_down_with_the_probe_latency() -> None:
    # A probe within the SLO: 85% of its throughput (random arrivals need headroom).
    assert first_guess(400.0, 25.0, SLO_MS) == pytest.approx(340.0)
    # A probe at 4x the SLO: a quarter of that (Little's law at the same throughput).
    assert first_guess(400.0, 200.0, SLO_MS) == pytest.approx(85.0)
    with pytest.raises(ValueError):
        first_guess(0.0, 10.0, SLO_MS)


def test_open_loop_users_cover_the_requests_in_flight() -> None:
    # 400 requests/s, answers up to 4 x 50 ms: up to 80 in flight, so 80 users.
    assert open_loop_users(400.0, SLO_MS) == 80
    assert open_loop_users(3.0, SLO_MS) == 8  # never fewer than 8
    # A 10 s SLO counts a quarter second of latency, and never more than 256 users.
    assert open_loop_users(100.0, 10_000) == 100
    assert open_loop_users(900.0, 10_000) == 256


def test_plan_cores_pins_apart_only_with_a_core_to_spare() -> None:
    assert plan_cores([0, 1], 2) is None  # this machine: the generator must share
    plan = plan_cores([3, 0, 2, 1], 2)
    assert plan is not None and plan.server == (0, 1) and plan.generator == (2, 3)
    plan = plan_cores(range(16), 2)
    assert plan is not None and plan.server == (0, 1) and len(plan.generator) == 14
    with pytest.raises(ValueError):
        plan_cores([0, 1, 2], 0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity only")
def test_pinned_tree_pins_every_thread_and_gives_them_back() -> None:
    # A child with a second thread: affinity is per thread on Linux, so both must move.
    code = (
        "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
        "time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):  # wait for the second thread
            tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
            if len(tids) >= 2:
                break
            time.sleep(0.05)
        before = {tid: os.sched_getaffinity(tid) for tid in tids}
        core = min(os.sched_getaffinity(0))
        with pinned_tree(child.pid, [core]) as pinned:
            assert pinned >= 2
            assert all(os.sched_getaffinity(tid) == {core} for tid in tids)
        assert {tid: os.sched_getaffinity(tid) for tid in tids} == before
    finally:
        child.kill()
        child.wait()


def test_sweep_summary_reads_old_files_and_keeps_the_cost_fields(tmp_path: Path) -> None:
    old = SweepSummary(
        model="m", slo_p95_ms=50.0, max_failure_rate=0.01, batch=1, length="all",
        step_seconds=8, workers=0, machine="2-core x", cpu_count=2, stop_reason="t",
        steps=[], at_slo=None,
    )  # fmt: skip
    data = dataclasses.asdict(old)
    for key in ("search", "probe", "bracket", "cost_basis", "server_cores", "generator_cores",
                "server_cpu_s_per_text", "texts_per_cpu_s", "method"):  # fmt: skip
        del data[key]  # as a sweep written before these fields existed
    (tmp_path / SWEEP_NAME).write_text(__import__("json").dumps(data))
    assert SweepSummary.read(tmp_path) == old
    new = dataclasses.replace(
        old, search="rate", cost_basis="server_cpu_seconds", server_cpu_s_per_text=0.004,
        texts_per_cpu_s=250.0, method="open loop", bracket=[300.0, 320.0],
    )  # fmt: skip
    new.write(tmp_path)
    assert SweepSummary.read(tmp_path) == new


def _fake_loadtests(monkeypatch, p95, probe_failure_rate: float = 0.0) -> list[float]:
    """run_loadtest replaced by the curve `p95`: a paced run offers users x the per-user
    rate; the closed-loop probe gets the capacity (and `probe_failure_rate` of it refused).
    Returns the rates measured."""
    from loadtests import rate_sweep
    from loadtests.run import LoadSummary

    offered: list[float] = []

    def fake(*, users, run_time_s, extra_env, **_):
        per_user = extra_env.get(rate_sweep.RATE_ENV)
        rate = 400.0 if per_user is None else float(per_user) * users
        latency = min(p95(rate), 5000.0) if per_user is not None else 120.0
        if per_user is not None:
            offered.append(rate)
        n = int(rate * run_time_s)
        failure_rate = probe_failure_rate if per_user is None else 0.0
        return LoadSummary(
            model="m", users=users, run_time_s=run_time_s, batch=1, requests=n,
            failures=int(n * failure_rate), failure_rate=failure_rate, rps=rate,
            texts_per_s=rate, p50_ms=latency / 2, p95_ms=latency,
            p99_ms=latency, mean_ms=latency / 2,
        )  # fmt: skip

    monkeypatch.setattr(rate_sweep, "run_loadtest", fake)
    return offered


@pytest.mark.parametrize("also", [(), (50.0, 100.0)])
def test_tighter_targets_get_a_search_of_their_own(monkeypatch, tmp_path, also) -> None:
    """The SLO's search (200 ms) measures only rates near its threshold (380 req/s here);
    with tighter targets each gets points near its own (320 and 360 req/s), so a report can
    price the model at 50 ms from a point that met it."""
    from loadtests.rate_sweep import run_rate_search
    from loadtests.sweep import best_at_slo

    p95 = queue_p95(400.0, 10.0)
    _fake_loadtests(monkeypatch, p95)
    found = run_rate_search(
        common={}, out_dir=tmp_path, probe_users=8, probe_seconds=3, point_seconds=3,
        points=6, slo_p95_ms=200.0, max_failure_rate=0.01, server_cores=2, rel_tol=0.04,
        echo=None, progress=None, also_targets=also,
    )  # fmt: skip
    assert found.result.best_rate == pytest.approx(380.0, rel=0.05)  # the SLO's answer
    summaries = [s for _, _, s in found.points]
    names = [d for d, _, _ in found.points]
    assert len(set(names)) == len(names)  # one directory per point
    for target, threshold in ((50.0, 320.0), (100.0, 360.0)):
        best = best_at_slo(summaries, target, 0.01)
        if also:
            assert best is not None and best.rps == pytest.approx(threshold, rel=0.06)
        elif target == 50.0:
            assert best is None  # no point that low: the report would call it unpriced


@pytest.mark.parametrize(("refused", "searched"), [(0.11, True), (0.9, False)])
def test_a_saturated_probe_with_a_few_refusals_still_starts_the_search(
    monkeypatch, tmp_path, refused, searched
) -> None:
    """A slow model's probe at 8 users sees a few queue-timeout refusals: it is full, not
    broken, and lighter rates still meet the SLO. A probe that answered almost nothing stops."""
    from loadtests.rate_sweep import run_rate_search

    offered = _fake_loadtests(monkeypatch, queue_p95(400.0, 10.0), probe_failure_rate=refused)
    found = run_rate_search(
        common={}, out_dir=tmp_path, probe_users=8, probe_seconds=3, point_seconds=3,
        points=6, slo_p95_ms=200.0, max_failure_rate=0.01, server_cores=2, rel_tol=0.04,
        echo=None, progress=None,
    )  # fmt: skip
    if searched:
        assert found.result is not None and found.result.best_rate == pytest.approx(380, rel=0.05)
    else:
        assert found.result is None and offered == []
        assert "probe failed" in found.stop_reason
