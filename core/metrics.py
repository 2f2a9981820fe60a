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


def multilabel_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Micro/macro-F1, exact match (every label of a row right) and per-label P/R/F1 of 0/1
    matrices (N, L). GoEmotions reports macro-F1: rare emotions count as much as neutral."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    report = classification_report(
        y_true, y_pred, target_names=list(label_names), output_dict=True, zero_division=0
    )
    return {
        "rows": len(y_true),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "exact_match": float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else 0.0,
        "per_class": {name: report[name] for name in label_names},
        "labels": list(label_names),
    }


def oos_metrics(y_true: Sequence[int], y_pred: Sequence[int], oos_index: int) -> dict[str, float]:
    """Larson et al. 2019's figures: accuracy on in-scope rows (predicting out-of-scope for
    one is an error) and recall of the out-of-scope rows; plus out-of-scope precision."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    in_scope, oos = t != oos_index, t == oos_index
    predicted_oos = p == oos_index
    return {
        "in_scope_accuracy": float((p[in_scope] == t[in_scope]).mean()) if in_scope.any() else 0.0,
        "oos_recall": float(predicted_oos[oos].mean()) if oos.any() else 0.0,
        "oos_precision": float(oos[predicted_oos].mean()) if predicted_oos.any() else 0.0,
        "in_scope_rows": int(in_scope.sum()),
        "oos_rows": int(oos.sum()),
    }
