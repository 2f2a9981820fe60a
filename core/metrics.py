"""Classification metrics from predicted and true label ids, as plain JSON-able dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from core.decision import DecisionRule, Decisions


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


def decision_metrics(
    rule: DecisionRule, decisions: Decisions, y_true: np.ndarray | Sequence[int]
) -> dict[str, Any]:
    """The metrics of one split's decisions under `rule`: what training reports, the export
    gate compares and a served model's answers are checked against. `y_true`: (N,) label ids,
    or (N, L) 0/1 for multi-label. Out-of-scope rules report the metrics with rejection (the
    answers a client gets) and, under `oos_argmax`, what plain argmax would have given."""
    if rule.multi_label:
        return {"problem_type": "multi_label"} | multilabel_metrics(
            np.asarray(y_true), decisions.chosen.astype(int), rule.labels
        )
    y = np.asarray(y_true)
    metrics = classification_metrics(y.tolist(), decisions.label_ids.tolist(), rule.labels)
    metrics["problem_type"] = "single_label"
    if rule.rejects:
        oos_index = rule.labels.index(rule.oos_label)  # type: ignore[arg-type]
        argmax = decisions.probabilities.argmax(axis=-1)
        metrics["oos"] = oos_metrics(y, decisions.label_ids, oos_index)
        metrics["oos"]["rejection_threshold"] = rule.rejection_threshold
        metrics["oos_argmax"] = oos_metrics(y, argmax, oos_index)
    return metrics


def decisions_from_answers(rule: DecisionRule, answers: Sequence[dict[str, Any]]) -> Decisions:
    """Answers as the API gives them ({"label", "labels", "rejected", "scores"?}) turned back
    into decisions, so served answers are scored by the same `decision_metrics`."""
    index = {name: i for i, name in enumerate(rule.labels)}
    chosen = np.zeros((len(answers), len(rule.labels)), dtype=bool)
    for row, answer in enumerate(answers):
        chosen[row, [index[name] for name in answer["labels"]]] = True
    label_ids = np.asarray([index[a["label"]] for a in answers], dtype=np.int64)
    rejected = np.asarray([bool(a.get("rejected", False)) for a in answers], dtype=bool)
    probs = np.asarray(
        [[a["scores"][name] for name in rule.labels] for a in answers]
        if answers and "scores" in answers[0]
        else np.zeros(chosen.shape)
    )
    return Decisions(probs, label_ids, chosen, rejected)
