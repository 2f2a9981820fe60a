"""Tests for the Pareto frontier and the recommendation on constructed tables."""

from __future__ import annotations

import dataclasses

import pytest

from reports.select import pareto_front, recommend


@dataclasses.dataclass
class Row:
    name: str
    accuracy: float | None
    usd_per_million: float | None
    p95_ms: float | None = 20.0
    meets_slo: bool = True
    macro_f1: float | None = None


def test_pareto_front_on_a_known_table() -> None:
    # (cost, accuracy): B, D and E are dominated; A is cheapest, F most accurate.
    points = [
        (0.05, 0.86),  # A: cheapest
        (0.10, 0.85),  # B: dearer and worse than A
        (0.08, 0.88),  # C: frontier
        (0.20, 0.88),  # D: as accurate as C, dearer
        (None, 0.99),  # E: no cost (missed the SLO), never on the frontier
        (0.30, 0.91),  # F: most accurate among priced
        (0.05, 0.86),  # G: a tie with A: neither dominates the other
    ]
    assert pareto_front(points) == [0, 6, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, None)]) == []


def test_recommends_the_cheapest_above_the_floor_with_runner_up() -> None:
    rows = [
        Row("big", 0.91, 0.50),
        Row("small", 0.86, 0.05),
        Row("mid", 0.88, 0.08),
        Row("cheap-but-bad", 0.70, 0.01),
        Row("accurate-but-slow", 0.95, None, p95_ms=400.0, meets_slo=False),
    ]
    rec = recommend(rows, accuracy_floor=0.85, latency_target_ms=50)
    assert (rec.choice, rec.runner_up) == ("small", "mid")
    assert rec.margin_usd == pytest.approx(0.03)
    assert rec.margin_pct == pytest.approx(60.0)
    assert "Runner-up: mid" in rec.message

    rec = recommend(rows, accuracy_floor=0.90, latency_target_ms=50)
    assert (rec.choice, rec.runner_up, rec.margin_usd) == ("big", None, None)
    assert "no runner-up" in rec.message


def test_nothing_meets_the_floor_says_so() -> None:
    rows = [Row("a", 0.80, 0.05), Row("b", 0.83, 0.07)]
    rec = recommend(rows, accuracy_floor=0.90, latency_target_ms=50)
    assert rec.choice is None and rec.runner_up is None
    assert "No model meets the accuracy floor of 90.0%" in rec.message
    assert "b at 83.00%" in rec.message


def test_accurate_but_too_slow_says_so() -> None:
    rows = [Row("slow", 0.95, None, p95_ms=300.0, meets_slo=False), Row("bad", 0.5, 0.01)]
    rec = recommend(rows, accuracy_floor=0.90, latency_target_ms=50)
    assert rec.choice is None
    assert "none kept p95 <= 50 ms" in rec.message and "slow" in rec.message


def test_no_accuracy_recorded_and_macro_f1() -> None:
    assert (
        "No model has a recorded accuracy"
        in recommend([Row("x", None, 0.1)], accuracy_floor=0.5, latency_target_ms=50).message
    )
    rows = [Row("a", 0.9, 0.1, macro_f1=0.80), Row("b", 0.8, 0.2, macro_f1=0.86)]
    assert recommend(rows, accuracy_floor=0.85, latency_target_ms=50,
                     metric="macro_f1").choice == "b"  # fmt: skip
    with pytest.raises(ValueError, match="metric"):
        recommend(rows, accuracy_floor=0.85, latency_target_ms=50, metric="f2")
