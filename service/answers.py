"""A request's options checked against its model, and logits turned into the API's answers
by the model's own decision rule (the one its training run evaluated with).

Every classification route answers through `Classifier.serve` with the same checks, batching,
decision rule and metrics; a route differs only in its `Shape`: how it reads its options and
writes its answers and errors (`ClassifyShape` here, TEI's in service/tei.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
from starlette.responses import JSONResponse

from core.manifest import TaskRule
from service.batching import ModelFailed, Overloaded
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


class Shape(Protocol):
    """One route's request options and answer format around the shared classification path."""

    route: str  # the metrics label
    texts_field: str  # the field the texts came in, as error messages name it

    def options(self, loaded: LoadedModel) -> dict[str, Any]:
        """`render`'s options for this request, checked against the model (ClientError)."""

    def answer(self, loaded: LoadedModel, body: dict[str, Any]) -> JSONResponse:
        """The 200 answer from `render`'s body."""

    def refuse(self, error: ClientError) -> JSONResponse: ...

    def overloaded(self, error: Overloaded) -> JSONResponse: ...

    def failed(self, error: ModelFailed) -> JSONResponse: ...


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_task(value: Any, loaded: LoadedModel) -> TaskRule | None:
    """The task a request asks of a multi-task model (400 naming its tasks when missing or
    unknown); None for a model of one task, which refuses the field rather than ignore it
    (a client that names a task expects that task's labels)."""
    tasks = loaded.classifier.tasks
    if not tasks:
        if value is None:
            return None
        raise ClientError(
            400,
            f"model {loaded.name!r} serves one task and takes no 'task' field: omit it, or "
            "send it to a multi-task model",
            "task",
        )
    if value is None:
        raise ClientError(
            400,
            f"model {loaded.name!r} serves several tasks: send 'task', one of {list(tasks)}",
            "task",
        )
    if not isinstance(value, str) or value not in tasks:
        raise ClientError(
            400,
            f"unknown task {shorten(repr(value))} for model {loaded.name!r}: use one of "
            f"{list(tasks)}",
            "task",
        )
    return tasks[value]


def check_threshold(value: Any, model: LoadedModel, task: TaskRule | None = None) -> dict[str, Any]:
    """This request's thresholds for `DecisionRule.decide`: per-label sigmoid thresholds of a
    multi-label model, or the rejection threshold of an out-of-scope model; {} for the
    manifest's own."""
    rule = task.decision if task is not None else model.classifier.decision
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


def check_top_k(
    value: Any, loaded: LoadedModel, field: str = "top_k", task: TaskRule | None = None
) -> int | None:
    n = len(task.labels if task is not None else loaded.classifier.labels)
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= n
    ):
        raise ClientError(400, f"{field} must be an integer in 1..{n}, got {value!r}", field)
    return value


@dataclasses.dataclass(frozen=True)
class ClassifyShape:
    """`POST /classify`: its body's options, `render`'s body as the answer, and errors as
    `{"error", "field"}`."""

    top_k: Any = None
    threshold: Any = None
    return_logits: Any = False
    truncate: Any = True
    task: Any = None  # multi-task models: the task whose prompt, labels and rule answer
    route: str = "/classify"
    texts_field: str = "texts"

    def options(self, loaded: LoadedModel) -> dict[str, Any]:
        task = check_task(self.task, loaded)
        top_k = check_top_k(self.top_k, loaded, task=task)
        for flag in ("return_logits", "truncate"):
            if not isinstance(getattr(self, flag), bool):
                raise ClientError(400, f"{flag} must be true or false", flag)
        return {
            "top_k": top_k,
            "thresholds": check_threshold(self.threshold, loaded, task),
            "return_logits": self.return_logits,
            "truncate": self.truncate,
            "task": task,
        }

    def answer(self, loaded: LoadedModel, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(body)

    def refuse(self, error: ClientError) -> JSONResponse:
        return error_response(error.status, error.message, error.field)

    def overloaded(self, error: Overloaded) -> JSONResponse:
        return error_response(503, str(error), "model", **{"retry-after": "1"})

    def failed(self, error: ModelFailed) -> JSONResponse:
        return error_response(500, f"{error}: retry, and report it if it persists", error.field)


def render(
    loaded: LoadedModel, logits: np.ndarray, truncated: np.ndarray, options: dict[str, Any]
) -> dict[str, Any]:
    """The response body: the manifest's decision rule (the one training evaluated with)
    applied to the batch's logits, with this request's threshold if it gave one. A
    multi-task model's logits cover every task's words: the request's task keeps its own
    columns and decides with its own rule."""
    task: TaskRule | None = options.get("task")
    rule = loaded.classifier.decision
    if task is not None:
        logits, rule = task.select(logits), task.decision
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
    body: dict[str, Any] = {"model": loaded.name, "version": loaded.version}
    if task is not None:
        body["task"] = task.name
    return body | {"predictions": predictions}
