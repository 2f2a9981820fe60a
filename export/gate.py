"""The accuracy gate: a variant ships only if it behaves like its fp32 parent.

Quantized models that silently lose accuracy (int8 down 5-15 points, or collapsed to one
label) and fp16 graphs that emit NaN are the common failures of export. Each variant's logits
on the full test split are decided by the run's own decision rule and compared with its fp32
parent's: too large a drop in the task's metrics (accuracy; micro/macro-F1 and exact match for
multi-label), too little agreement of the answers, or any non-finite value refuses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.decision import DecisionRule, Decisions
from core.metrics import decision_metrics

MAX_ACCURACY_DROP = 0.01  # one point of accuracy below the fp32 parent
MIN_AGREEMENT = 0.99  # share of test rows whose answer (label set) equals the fp32 parent's


# The metrics each task type is gated on: the headline first (reported as "accuracy" in
# GateResult), each allowed to drop at most max_accuracy_drop below the fp32 parent's.
GATED_METRICS = {
    "single_label": ("accuracy",),  # with out-of-scope rejection applied, if the rule has it
    "multi_label": ("macro_f1", "micro_f1", "exact_match"),
}


def _metrics(rule: DecisionRule, decisions: Decisions, truth: np.ndarray) -> dict[str, float]:
    full = decision_metrics(rule, decisions, truth)
    return {name: float(full[name]) for name in GATED_METRICS[rule.problem_type]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateResult:
    passed: bool
    reasons: list[str]  # empty when passed; one short sentence per failed check
    metric: str  # the headline metric below: accuracy, or macro_f1 for multi-label
    accuracy: float | None
    parent_accuracy: float | None
    accuracy_drop: float | None  # parent - variant, in [0, 1]; negative when the variant gains
    # Every gated metric: {"variant", "parent", "drop"}.
    metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    agreement: float  # vs the fp32 parent (exact label-set match for multi-label)
    max_abs_logit_diff: float
    finite: bool
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    min_agreement: float = MIN_AGREEMENT
    forced: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def message(self, name: str) -> str:
        """One line a user can act on."""
        if self.passed:
            return f"{name}: passed the accuracy gate (agreement {self.agreement:.2%})"
        return (
            f"{name} refused by the accuracy gate: {'; '.join(self.reasons)}. "
            "It was kept aside, not registered; pass --force to keep it anyway"
        )


def check(
    logits: np.ndarray,
    parent_logits: np.ndarray,
    y_true: np.ndarray | Sequence[int] | None,
    *,
    rule: DecisionRule,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    min_agreement: float = MIN_AGREEMENT,
) -> GateResult:
    """Compare a variant's (N, L) logits with its fp32 parent's on the same N test rows,
    both decided by the run's own rule (thresholds and rejection included).

    `y_true`: (N,) label ids, or (N, L) 0/1 for multi-label; None skips the metric checks
    (agreement and finiteness are still checked).
    """
    if logits.shape != parent_logits.shape:
        raise ValueError(f"logits {logits.shape} and parent logits {parent_logits.shape} differ")
    valid = np.isfinite(logits).all(axis=-1)  # (N,)
    finite = bool(valid.all())
    # A row with NaN/inf counts as wrong and as disagreeing, whatever its argmax says.
    ours = rule.decide(np.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0))
    parent = rule.decide(parent_logits)
    same = (ours.chosen == parent.chosen).all(axis=-1) & valid
    agreement = float(same.mean()) if len(same) else 1.0
    diff = np.abs(logits.astype(np.float64) - parent_logits.astype(np.float64))
    max_diff = float(np.nanmax(diff)) if finite and diff.size else float("inf")

    reasons = []
    if not finite:
        reasons.append(f"NaN/inf logits on {int((~valid).sum())} of {len(logits)} test rows")
    compared: dict[str, dict[str, float]] = {}
    if y_true is not None and len(logits):
        truth = np.asarray(y_true)
        if not finite:  # invalid rows must count as wrong: give them a label set nobody has
            ours = dataclasses.replace(
                ours,
                chosen=np.where(valid[:, None], ours.chosen, ~truth.astype(bool))
                if rule.multi_label
                else ours.chosen,
                label_ids=np.where(valid, ours.label_ids, -1),
            )
        mine, theirs = _metrics(rule, ours, truth), _metrics(rule, parent, truth)
        for name in mine:
            drop = theirs[name] - mine[name]
            compared[name] = {"variant": mine[name], "parent": theirs[name], "drop": drop}
            if drop > max_accuracy_drop:
                reasons.append(
                    f"{name} {mine[name]:.2%} is {drop * 100:.1f} points below fp32's "
                    f"{theirs[name]:.2%} (limit {max_accuracy_drop * 100:.1f})"
                )
    if agreement < min_agreement:
        reasons.append(
            f"agrees with fp32 on {agreement:.2%} of test rows (needs {min_agreement:.0%})"
        )
    headline = compared.get(GATED_METRICS[rule.problem_type][0])
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        metric=GATED_METRICS[rule.problem_type][0],
        accuracy=headline["variant"] if headline else None,
        parent_accuracy=headline["parent"] if headline else None,
        accuracy_drop=headline["drop"] if headline else None,
        metrics=compared,
        agreement=agreement,
        max_abs_logit_diff=max_diff,
        finite=finite,
        max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement,
    )
