"""Choosing among models: the Pareto frontier and the recommendation. Pure functions, no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    name: str
    accuracy: float | None
    macro_f1: float | None
    p95_ms: float | None
    usd_per_million: float | None
    meets_slo: bool


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the points no other point beats: x lower is better (cost, latency), y higher
    is better (accuracy). A point is dominated when another is at least as good on both and
    strictly better on one; points with a missing coordinate are never on the frontier.
    Returned in order of increasing x."""
    valid = [(i, x, y) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    front = [
        i
        for i, x, y in valid
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, x2, y2 in valid if j != i)
    ]
    return sorted(front, key=lambda i: (points[i][0], -(points[i][1] or 0.0)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recommendation:
    choice: str | None  # model name; None when nothing qualifies
    runner_up: str | None
    choice_cost: float | None  # $ per million
    runner_up_cost: float | None
    margin_usd: float | None  # runner-up cost - choice cost, $ per million
    margin_pct: float | None  # margin / choice cost * 100
    message: str  # one paragraph, for humans


def recommend(
    rows: Sequence[Candidate],
    *,
    accuracy_floor: float,
    latency_target_ms: float,
    metric: str = "accuracy",
    instance: str = "",
) -> Recommendation:
    """The cheapest model whose `metric` >= floor and whose p95 met the latency target at a
    measured throughput, with the runner-up and the margin; says plainly when none qualifies.
    A row's cost and p95 are those of its operating point at the latency target."""
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be accuracy or macro_f1, got {metric!r}")
    label = "accuracy" if metric == "accuracy" else "macro-F1"
    where = f" on {instance}" if instance else ""

    def score(row: Candidate) -> float | None:
        return getattr(row, metric)

    scored = [r for r in rows if score(r) is not None]
    accurate = [r for r in scored if score(r) >= accuracy_floor]  # type: ignore[operator]
    if not accurate:
        if not scored:
            text = f"No model has a recorded {label}: nothing can be recommended."
        else:
            best = max(scored, key=lambda r: score(r))  # type: ignore[arg-type,return-value]
            text = (
                f"No model meets the {label} floor of {accuracy_floor:.1%}: the best is "
                f"{best.name} at {score(best):.2%}. Lower the floor or train a better model."
            )
        return _none(text)
    fast = [r for r in accurate if r.meets_slo and r.usd_per_million is not None]
    if not fast:
        names = ", ".join(r.name for r in accurate)
        return _none(
            f"{len(accurate)} model(s) meet the {label} floor of {accuracy_floor:.1%} ({names}), "
            f"but none kept p95 <= {latency_target_ms:g} ms at any measured concurrency, so "
            "none has a cost at that target. Relax the latency target or load-test at lower "
            "concurrency."
        )
    ranked = sorted(fast, key=lambda r: (r.usd_per_million, -(score(r) or 0.0), r.name))
    choice = ranked[0]
    head = (
        f"Recommended: {choice.name}, ${choice.usd_per_million:.4f} per million "
        f"classifications{where}, {label} {score(choice):.2%}, p95 {choice.p95_ms:.0f} ms "
        f"(floor {accuracy_floor:.1%}, target p95 <= {latency_target_ms:g} ms)."
    )
    if len(ranked) == 1:
        return Recommendation(
            choice=choice.name, runner_up=None, choice_cost=choice.usd_per_million,
            runner_up_cost=None, margin_usd=None, margin_pct=None,
            message=head + " No other model qualifies, so there is no runner-up.",
        )  # fmt: skip
    runner = ranked[1]
    assert choice.usd_per_million is not None and runner.usd_per_million is not None
    margin = runner.usd_per_million - choice.usd_per_million
    pct = 100 * margin / choice.usd_per_million if choice.usd_per_million else None
    tail = (
        f" Runner-up: {runner.name} at ${runner.usd_per_million:.4f} per million "
        f"({label} {score(runner):.2%}, p95 {runner.p95_ms:.0f} ms), "
        f"${margin:.4f} per million more" + ("" if pct is None else f" (+{pct:.0f}%)") + "."
    )
    return Recommendation(
        choice=choice.name, runner_up=runner.name, choice_cost=choice.usd_per_million,
        runner_up_cost=runner.usd_per_million, margin_usd=margin, margin_pct=pct,
        message=head + tail,
    )  # fmt: skip


def _none(message: str) -> Recommendation:
    return Recommendation(
        choice=None, runner_up=None, choice_cost=None, runner_up_cost=None,
        margin_usd=None, margin_pct=None, message=message,
    )  # fmt: skip
