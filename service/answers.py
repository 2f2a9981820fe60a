"""A request's options checked against its model, and logits turned into the API's answers
by the model's own decision rule (the one its training run evaluated with)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from service.models import LoadedModel


def shorten(text: str, limit: int = 80) -> str:
    # Client strings echoed in errors: a 1 MB model name should not make a 1 MB error.
    return text if len(text) <= limit else text[:limit] + "…"


class ClientError(Exception):
    def __init__(self, status: int, message: str, field: str) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str, **headers: str) -> JSONResponse:
    # Returned directly: BentoML's own handler wraps 4xx bodies of BentoMLException in a list.
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_threshold(value: Any, model: LoadedModel) -> dict[str, Any]:
    """This request's thresholds for `DecisionRule.decide`: per-label sigmoid thresholds of a
    multi-label model, or the rejection threshold of an out-of-scope model; {} for the
    manifest's own."""
    rule = model.classifier.decision
    if value is None:
        return {}
    if rule.rejects:
        if not is_number(value) or not 0.0 <= value < 1.0:
            raise ClientError(
                400,
                f"threshold of {model.name!r} is its out-of-scope rejection threshold: a number "
                f"in [0, 1) (texts whose top probability is below it get {rule.oos_label!r}), "
                f"got {shorten(repr(value))}",
                "threshold",
            )
        return {"rejection_threshold": float(value)}
    if not rule.multi_label:
        raise ClientError(
            400,
            f"threshold applies to multi-label and out-of-scope models; {model.name!r} is "
            "single-label without rejection",
            "threshold",
        )
    thresholds = rule.default_thresholds()
    if is_number(value):
        values = {label: value for label in rule.labels}
    elif isinstance(value, dict):
        if unknown := sorted(set(value) - set(rule.labels)):
            raise ClientError(
                400,
                f"unknown label {shorten(unknown[0])!r}: labels are {rule.labels}",
                f"threshold.{shorten(unknown[0])}",
            )
        values = value
    else:
        raise ClientError(400, "threshold must be a number or {label: number}", "threshold")
    for label, t in values.items():
        field = "threshold" if is_number(value) else f"threshold.{label}"
        if not is_number(t) or not 0.0 < t < 1.0:
            raise ClientError(400, f"{field} must be a number in (0, 1), got {t!r}", field)
        thresholds[rule.labels.index(label)] = float(t)
    return {"thresholds": thresholds}


def render(
    loaded: LoadedModel, logits: np.ndarray, truncated: np.ndarray, options: dict[str, Any]
) -> dict[str, Any]:
    """The response body: the manifest's decision rule (the one training evaluated with)
    applied to the batch's logits, with this request's threshold if it gave one."""
    rule = loaded.classifier.decision
    labels = rule.labels
    decisions = rule.decide(logits, **options["thresholds"])
    top_k = options["top_k"]
    predictions = []
    for i, (row, row_logits, cut) in enumerate(
        zip(decisions.probabilities, logits, truncated, strict=True)
    ):
        order = np.argsort(-row, kind="stable")[:top_k] if top_k else range(len(labels))
        prediction: dict[str, Any] = {
            "label": labels[int(decisions.label_ids[i])],
            "labels": [labels[j] for j in np.flatnonzero(decisions.chosen[i])],
            "rejected": bool(decisions.rejected[i]),
            "scores": {labels[j]: float(row[j]) for j in order},
            "truncated": bool(cut),
        }
        if options["return_logits"]:
            prediction["logits"] = {labels[j]: float(row_logits[j]) for j in order}
        predictions.append(prediction)
    return {"model": loaded.name, "version": loaded.version, "predictions": predictions}
