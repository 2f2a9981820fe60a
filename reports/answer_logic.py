"""What the answer page concludes: the summary matrix (dataset x family), the plain-words answer
per dataset and the cost of quantization. Pure functions over collected entries, no I/O.

"Within 1 point" is on the dataset's headline metric (accuracy, or macro-F1 where that is
what the dataset is judged by): 0.01 as a fraction. Costs are those at one latency target, so
every comparison on a line is at the same p95.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from reports.answer import Entry
from reports.references import label as metric_label
from reports.rows import FAMILY_LABELS

TOLERANCE = 0.01  # one point of the headline metric


def family_label(family: str) -> str:
    return FAMILY_LABELS.get(family, family)


def cost_at(entry: Entry, target_ms: float) -> float | None:
    point = entry.at(target_ms)
    return point.usd_per_million if point is not None and point.meets else None


def _best(entries: Sequence[Entry], target_ms: float) -> Entry | None:
    """Highest score; among equal scores the cheaper (unpriced last), then by name."""
    scored = [e for e in entries if e.score is not None]
    if not scored:
        return None
    return min(scored, key=lambda e: (-e.score, _cost_key(e, target_ms), e.name))  # type: ignore[operator]


def _cost_key(entry: Entry, target_ms: float) -> float:
    cost = cost_at(entry, target_ms)
    return float("inf") if cost is None else cost


def cheapest_within(
    entries: Sequence[Entry], target_ms: float, tolerance: float = TOLERANCE
) -> Entry | None:
    """The cheapest model priced at the target whose score is within `tolerance` of the best
    score among `entries` (priced or not: the best may be too slow for the target)."""
    best = _best(entries, target_ms)
    if best is None or best.score is None:
        return None
    close = [
        e
        for e in entries
        if e.score is not None
        and e.score >= best.score - tolerance - 1e-12
        and cost_at(e, target_ms) is not None
    ]
    return min(
        close, key=lambda e: (_cost_key(e, target_ms), -(e.score or 0), e.name), default=None
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """One dataset x family cell of the summary matrix."""

    dataset: str
    family: str
    best: Entry  # highest score in the family
    best_cost: float | None
    cheapest_close: Entry | None  # cheapest of the family within 1 point of its best
    cheapest_cost: float | None


def matrix(datasets: dict[str, list[Entry]], target_ms: float) -> list[Cell]:
    cells = []
    for dataset, entries in datasets.items():
        for family in _families(entries):
            members = [e for e in entries if e.family == family]
            best = _best(members, target_ms)
            if best is None:
                continue
            close = cheapest_within(members, target_ms)
            cells.append(
                Cell(
                    dataset=dataset,
                    family=family,
                    best=best,
                    best_cost=cost_at(best, target_ms),
                    cheapest_close=close,
                    cheapest_cost=None if close is None else cost_at(close, target_ms),
                )
            )
    return cells


def _families(entries: Sequence[Entry]) -> list[str]:
    order = list(FAMILY_LABELS)
    found = {e.family for e in entries}
    return sorted(found, key=lambda f: (order.index(f) if f in order else len(order), f))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Answer:
    dataset: str
    target_ms: float | None  # the target the costs are at; None when no model has a cost
    winner: Entry | None  # the cheapest model within 1 point of the dataset's best
    best: Entry | None  # the most accurate model
    rival: Entry | None  # the best model of the strongest other family
    points_vs_rival: float | None  # winner - rival, in points
    cost_multiple: float | None  # rival's cost / winner's cost
    text: str


def answer(
    dataset: str, entries: Sequence[Entry], targets: Sequence[float], tolerance: float = TOLERANCE
) -> Answer:
    """Which family wins on this dataset, by how much, at what multiple of cost. The first
    target is used; when no model close to the best has a cost there, the next one."""
    best = _best(entries, targets[0]) if targets else None
    none = dict(dataset=dataset, rival=None, points_vs_rival=None, cost_multiple=None)
    if best is None:
        return Answer(
            **none,
            target_ms=None,
            winner=None,
            best=None,
            text=f"{dataset}: no model has a recorded score.",
        )
    label = metric_label(best.metric)
    for target in targets:
        winner = cheapest_within(entries, target, tolerance)
        if winner is not None:
            break
    else:
        return Answer(
            **none,
            target_ms=None,
            winner=None,
            best=best,
            text=(
                f"{dataset}: no model within {100 * tolerance:g} point of the best ({best.name}, "
                f"{_pct(best.score)} {label}) kept p95 within {max(targets):g} ms at any measured "
                "load, so none has a cost; load-test at fewer users or name a looser target."
            ),
        )
    where = f"at p95 <= {target:g} ms" + (
        f", since nothing within {100 * tolerance:g} point of the best met {targets[0]:g} ms"
        if target != targets[0]
        else ""
    )
    others = [e for e in entries if e.family != winner.family]
    rival = _best(others, target)
    win_cost = cost_at(winner, target)
    assert win_cost is not None
    head = (
        f"{dataset}: {family_label(winner.family)} wins with {winner.name}, {_pct(winner.score)} "
        f"{label}, ${win_cost:.4f} per million {where}"
    )
    if rival is None or rival.score is None:
        text = head + "; no other family was measured on this dataset."
        return Answer(
            dataset=dataset,
            target_ms=target,
            winner=winner,
            best=best,
            rival=None,
            points_vs_rival=None,
            cost_multiple=None,
            text=text,
        )
    points = 100 * (winner.score - rival.score)  # type: ignore[operator]
    rival_cost = cost_at(rival, target)
    multiple = None if rival_cost is None else rival_cost / win_cost
    text = (
        f"{head}: {_signed(points)} than the best {family_label(rival.family)} "
        f"({rival.name}, {_pct(rival.score)}), "
        + (
            f"which has no cost at {target:g} ms (no load met it)"
            if multiple is None
            else f"{_times(multiple)}"
        )
        + "."
    )
    if best is not winner and best.family != rival.family:
        best_cost = cost_at(best, target)
        gap = 100 * (best.score - winner.score)  # type: ignore[operator]
        # Equal scores (the winner was the cheaper of a tie): no "0.00 points better".
        better = "as accurate" if round(gap, 2) == 0 else f"{gap:.2f} points better"
        text += f" The most accurate, {best.name} ({_pct(best.score)}), is {better}" + (
            f" at {best_cost / win_cost:.1f} times the cost."
            if best_cost is not None
            else f" but has no cost at {target:g} ms."
        )
    return Answer(
        dataset=dataset,
        target_ms=target,
        winner=winner,
        best=best,
        rival=rival,
        points_vs_rival=points,
        cost_multiple=multiple,
        text=text,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _signed(points: float) -> str:
    if abs(points) < 0.005:
        return "the same score"
    return f"{abs(points):.2f} points {'more' if points > 0 else 'less'}"


def _times(multiple: float) -> str:
    """The rival's cost as a multiple of the winner's, in words."""
    if 0.95 <= multiple <= 1.05:
        return "at about the same cost"
    if multiple > 1:
        return f"at 1/{multiple:.1f} of its cost"
    return f"at {1 / multiple:.1f} times its cost"


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRow:
    dataset: str
    model: str
    reference: str  # the fp32 export of the same run
    precision: str
    points: float | None  # headline metric change, variant - fp32
    label_agreement: float | None
    speed: float | None  # fp32's p95 at the lightest load / the variant's (>1: faster)
    throughput_ratio: float | None  # at the target, variant / fp32
    cost_ratio: float | None  # at the target, variant / fp32
    size_ratio: float | None


def quantization(entries: Sequence[Entry], target_ms: float) -> list[QuantRow]:
    fp32 = {(e.dataset, e.group()): e for e in entries if e.precision == "fp32"}
    out = []
    for e in entries:
        ref = fp32.get((e.dataset, e.group()))
        if e.precision == "fp32" or ref is None:
            continue
        pe, pr = e.at(target_ms), ref.at(target_ms)
        out.append(
            QuantRow(
                dataset=e.dataset,
                model=e.name,
                reference=ref.name,
                precision=e.precision,
                points=None
                if e.score is None or ref.score is None
                else 100 * (e.score - ref.score),
                label_agreement=e.label_agreement_vs_fp32,
                speed=_ratio(_lightest_p95(ref), _lightest_p95(e)),
                throughput_ratio=_ratio(pe and pe.texts_per_s, pr and pr.texts_per_s),
                cost_ratio=_ratio(cost_at(e, target_ms), cost_at(ref, target_ms)),
                size_ratio=_ratio(e.model_mb, ref.model_mb),
            )
        )
    return out


def _lightest_p95(entry: Entry) -> float | None:
    return entry.curve[0].p95_ms if entry.curve else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
