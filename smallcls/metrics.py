"""Classification metrics from predicted and true label ids, as plain JSON-able dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 (never hidden behind accuracy on imbalanced data), per-class report
    and confusion matrix (rows = true label, columns = predicted, in `label_names` order)."""
    ids = list(range(len(label_names)))
    report = classification_report(
        y_true,
        y_pred,
        labels=ids,
        target_names=list(label_names),
        output_dict=True,
        zero_division=0,
    )
    return {
        "rows": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {name: report[name] for name in label_names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(label_names),
    }


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax label is the same in two logit matrices (B, L)."""
    return float((a.argmax(axis=-1) == b.argmax(axis=-1)).mean()) if len(a) else 1.0
