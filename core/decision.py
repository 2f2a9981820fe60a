"""Logits to answers: the one decision rule of training's evaluation, the export gate and the API.

Three rules, chosen by training and written into the run and the manifest:
- single-label: softmax over the labels, the most probable one wins;
- single-label with out-of-scope rejection: the same, but when the top probability is below
  `rejection_threshold` the answer is `oos_label`, marked as rejected (CLINC150's setting,
  "An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction", Larson et
  al. 2019, https://arxiv.org/abs/1909.02027);
- multi-label: one sigmoid per label, every label at or above its own threshold is chosen.

Pure numpy: the same function turns a torch model's logits and an ONNX graph's into the same
answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from core.fields import from_fields

ProblemType = Literal["single_label", "multi_label"]


class DecisionError(ValueError):
    """A decision rule that cannot be applied; the message names the field."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows for a large |logit|.
    out = np.empty_like(logits)
    pos = logits >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-logits[pos]))
    exp = np.exp(logits[~pos])
    out[~pos] = exp / (1.0 + exp)
    return out


def choose_labels(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N, L) bool: every label whose probability is at or above its own threshold."""
    return np.asarray(probs) >= np.asarray(thresholds)[None, :]


def _probability(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise DecisionError(f"{field} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Decisions:
    """What a rule decided for N rows."""

    probabilities: np.ndarray  # (N, L) softmax or sigmoid
    label_ids: np.ndarray  # (N,) the answer's label (the out-of-scope label when rejected)
    chosen: np.ndarray  # (N, L) bool: every predicted label (one per row if single-label)
    rejected: np.ndarray  # (N,) bool: below the rejection threshold


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecisionRule:
    labels: list[str]  # logit i is labels[i]
    problem_type: ProblemType = "single_label"
    thresholds: list[float] | None = None  # multi-label: one sigmoid threshold per label
    oos_label: str | None = None  # single-label: the label given to rejected texts
    rejection_threshold: float | None = None  # reject when the top probability is below

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise DecisionError(f"labels must be >= 2 distinct names, got {self.labels!r}")
        if self.problem_type not in ("single_label", "multi_label"):
            raise DecisionError(
                f"problem_type must be single_label or multi_label, got {self.problem_type!r}"
            )
        if self.thresholds is not None:
            if self.problem_type != "multi_label":
                raise DecisionError("thresholds apply to multi_label rules only")
            if len(self.thresholds) != len(self.labels) or not all(
                0.0 < t < 1.0 for t in self.thresholds
            ):
                raise DecisionError(
                    f"thresholds must hold one value in (0, 1) per label ({len(self.labels)}), "
                    f"got {self.thresholds!r}"
                )
        if (self.oos_label is None) != (self.rejection_threshold is None):
            raise DecisionError("oos_label and rejection_threshold go together")
        if self.oos_label is not None:
            if self.problem_type != "single_label":
                raise DecisionError("out-of-scope rejection applies to single_label rules only")
            if self.oos_label not in self.labels:
                raise DecisionError(f"oos_label {self.oos_label!r} is not among the labels")
            _probability(self.rejection_threshold, "rejection_threshold")

    @property
    def rejects(self) -> bool:
        return self.oos_label is not None

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label"

    def default_thresholds(self) -> list[float]:
        return list(self.thresholds) if self.thresholds else [0.5] * len(self.labels)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def decide(
        self,
        logits: np.ndarray,
        *,
        thresholds: Sequence[float] | None = None,
        rejection_threshold: float | None = None,
    ) -> Decisions:
        """(N, L) logits to answers; `thresholds` (multi-label) or `rejection_threshold`
        (out-of-scope rules) replace the rule's own for this call."""
        probs = self.probabilities(logits)
        best = probs.argmax(axis=-1) if len(probs) else np.zeros(0, dtype=np.int64)
        rejected = np.zeros(len(probs), dtype=bool)
        if self.multi_label:
            cut = thresholds if thresholds is not None else self.default_thresholds()
            return Decisions(probs, best, choose_labels(probs, cut), rejected)
        if self.rejects:
            t = self.rejection_threshold if rejection_threshold is None else rejection_threshold
            rejected = probs.max(axis=-1, initial=0.0) < t
            best = np.where(rejected, self.labels.index(self.oos_label), best)
        chosen = np.zeros(probs.shape, dtype=bool)
        chosen[np.arange(len(best)), best] = True
        return Decisions(probs, best, chosen, rejected)

    def answers(self, decisions: Decisions) -> list[dict[str, Any]]:
        """Per row: {"label", "labels", "rejected"}, the part of an answer both the run's
        saved predictions and the API give."""
        return [
            {
                "label": self.labels[int(best)],
                "labels": [self.labels[i] for i in np.flatnonzero(row)],
                "rejected": bool(rej),
            }
            for best, row, rej in zip(
                decisions.label_ids, decisions.chosen, decisions.rejected, strict=True
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        return from_fields(cls, data, "decision", DecisionError)
