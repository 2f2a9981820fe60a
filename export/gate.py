"""The accuracy gate: a variant ships only if it behaves like its fp32 parent.

Quantized models that silently lose accuracy (int8 down 5-15 points, or collapsed to one
label) and fp16 graphs that emit NaN are the common failures of export. Each variant's logits
on the full test split are compared with its fp32 parent's: too large an accuracy drop, too
little label agreement, or any non-finite value refuses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_ACCURACY_DROP = 0.01  # one point of accuracy below the fp32 parent
MIN_AGREEMENT = 0.99  # share of test rows whose decision equals the fp32 parent's


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def decisions(
    logits: np.ndarray, problem_type: str, thresholds: Sequence[float] | None
) -> np.ndarray:
    """Single label: (N,) argmax ids. Multi label: (N, L) booleans, sigmoid >= threshold."""
    if problem_type == "multi_label":
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * logits.shape[1])
        return sigmoid(logits) >= cut
    return logits.argmax(axis=-1)


def _rowwise_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Multi-label rows agree only when the whole label set matches (exact match).
    return (a == b).all(axis=-1) if a.ndim == 2 else a == b


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateResult:
    passed: bool
    reasons: list[str]  # empty when passed; one short sentence per failed check
    accuracy: float | None
    parent_accuracy: float | None
    accuracy_drop: float | None  # parent - variant, in [0, 1]; negative when the variant gains
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
    problem_type: str = "single_label",
    thresholds: Sequence[float] | None = None,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    min_agreement: float = MIN_AGREEMENT,
) -> GateResult:
    """Compare a variant's (N, L) logits with its fp32 parent's on the same N test rows.

    `y_true`: (N,) label ids, or (N, L) 0/1 for multi-label (accuracy = exact match); None
    skips the accuracy check (agreement and finiteness are still checked).
    """
    if logits.shape != parent_logits.shape:
        raise ValueError(f"logits {logits.shape} and parent logits {parent_logits.shape} differ")
    valid = np.isfinite(logits).all(axis=-1)  # (N,)
    finite = bool(valid.all())
    # A row with NaN/inf counts as wrong and as disagreeing, whatever its argmax says.
    ours = decisions(np.nan_to_num(logits, nan=0.0), problem_type, thresholds)
    parent = decisions(parent_logits, problem_type, thresholds)
    same = _rowwise_equal(ours, parent) & valid
    agreement = float(same.mean()) if len(same) else 1.0
    diff = np.abs(logits.astype(np.float64) - parent_logits.astype(np.float64))
    max_diff = float(np.nanmax(diff)) if finite and diff.size else float("inf")

    accuracy = parent_accuracy = drop = None
    if y_true is not None and len(logits):
        truth = np.asarray(y_true)
        if problem_type == "multi_label":
            truth = truth.astype(bool)
        accuracy = float((_rowwise_equal(ours, truth) & valid).mean())
        parent_accuracy = float(_rowwise_equal(parent, truth).mean())
        drop = parent_accuracy - accuracy

    reasons = []
    if not finite:
        reasons.append(f"NaN/inf logits on {int((~valid).sum())} of {len(logits)} test rows")
    if drop is not None and drop > max_accuracy_drop:
        reasons.append(
            f"accuracy {accuracy:.2%} is {drop * 100:.1f} points below fp32's "
            f"{parent_accuracy:.2%} (limit {max_accuracy_drop * 100:.1f})"
        )
    if agreement < min_agreement:
        reasons.append(
            f"agrees with fp32 on {agreement:.2%} of test rows (needs {min_agreement:.0%})"
        )
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        accuracy=accuracy,
        parent_accuracy=parent_accuracy,
        accuracy_drop=drop,
        agreement=agreement,
        max_abs_logit_diff=max_diff,
        finite=finite,
        max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement,
    )
