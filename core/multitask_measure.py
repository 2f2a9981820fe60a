"""The record of one multi-task model against one encoder per task on a mixed stream:
`<out>/multitask_measure.json`, written by `bench/multitask_serving.py measure` and read by the
answer page (`smallcls report --multitask PATH`).

Shape (schema version 1), every figure as measured, every accuracy with the manifest it was
read from:

    {"schema_version": 1, "tasks": ["sst2", "trec"],
     "multitask": {<setup>}, "per_task_encoders": {<setup>},
     "instance": "c7i.large", "usd_per_hour": 0.08925, "price_table": "configs/prices.yaml",
     "users": 4, "seconds_per_round": 12.0, "warmup_seconds": 3.0, "rounds": 3,
     "command": "python -m bench.multitask_serving measure ...", "date": "2026-12-01T18:00:00Z"}

    <setup> = {"name": "...", "models": [{"name", "model_dir", "manifest", "model_onnx_bytes"}],
               "accuracy": [{"task", "model", "accuracy", "answers_equal_to_run", "test_rows",
                             "source"}],
               "rounds": [{"texts_per_s", "p50_ms", "p95_ms", "rss_mb", "requests", "errors"}],
               "median_texts_per_s", "median_p50_ms", "median_p95_ms",
               "median_rss_mb", "min_rss_mb", "max_rss_mb", "errors", "usd_per_million"}

Medians are over rounds; `rss_mb` is the server's resident memory (its process tree) after a
round's stream, for all tasks served; `usd_per_million` is at the median rate on `instance`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.fields import from_fields, read_json_object

MULTITASK_MEASURE_NAME = "multitask_measure.json"
MULTITASK_SCHEMA_VERSION = 1


class MultitaskMeasureError(ValueError):
    """A multi-task measurement record that cannot be used; the message names the field."""


def _number(where: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MultitaskMeasureError(f"{where} must be a number, got {json.dumps(value)}")
    if not low <= value <= high:
        raise MultitaskMeasureError(f"{where} must be in [{low:g}, {high:g}], got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedModel:
    """One model directory a setup served."""

    name: str
    model_dir: str
    manifest: str  # the manifest.json its size (and its accuracy) was read from
    model_onnx_bytes: int

    def __post_init__(self) -> None:
        _number(f"model {self.name!r} model_onnx_bytes", self.model_onnx_bytes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskAccuracy:
    """One task's served accuracy on its test split, as that model's manifest records it."""

    task: str
    model: str  # the served model that answers this task
    accuracy: float  # fraction 0..1
    answers_equal_to_run: float | None  # fraction of served answers equal to the run's own
    test_rows: int | None
    source: str  # the manifest.json it was read from

    def __post_init__(self) -> None:
        _number(f"task {self.task!r} accuracy", self.accuracy, high=1.0)
        if self.answers_equal_to_run is not None:
            _number(f"task {self.task!r} answers_equal_to_run", self.answers_equal_to_run, high=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamRound:
    """One round of the mixed stream against one setup."""

    texts_per_s: float
    p50_ms: float
    p95_ms: float
    rss_mb: float
    requests: int
    errors: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _number(f"round {field.name}", getattr(self, field.name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SetupResult:
    """One setup (the multi-task model, or one encoder per task): its models, its accuracy per
    task and the mixed stream's figures, medians over rounds."""

    name: str
    models: list[ServedModel]
    accuracy: list[TaskAccuracy]
    rounds: list[StreamRound]
    median_texts_per_s: float
    median_p50_ms: float
    median_p95_ms: float
    median_rss_mb: float
    min_rss_mb: float
    max_rss_mb: float
    errors: int
    usd_per_million: float | None  # None when nothing was answered

    def __post_init__(self) -> None:
        if not self.models or not self.rounds:
            raise MultitaskMeasureError(f"setup {self.name!r} needs models and rounds")
        for name in ("median_texts_per_s", "median_p50_ms", "median_p95_ms", "median_rss_mb",
                     "min_rss_mb", "max_rss_mb", "errors"):  # fmt: skip
            _number(f"setup {self.name!r} {name}", getattr(self, name))
        if self.usd_per_million is not None:
            _number(f"setup {self.name!r} usd_per_million", self.usd_per_million)

    @classmethod
    def from_rounds(
        cls,
        *,
        name: str,
        models: list[ServedModel],
        accuracy: list[TaskAccuracy],
        rounds: list[StreamRound],
        price: Callable[[float], float | None],  # texts/s -> $ per million on the instance
    ) -> SetupResult:
        """The medians (and the memory's range) over `rounds`; $ per million at the median
        rate, from `price`."""
        rss = [r.rss_mb for r in rounds]
        rate = statistics.median(r.texts_per_s for r in rounds)
        return cls(
            name=name,
            models=models,
            accuracy=accuracy,
            rounds=rounds,
            median_texts_per_s=rate,
            median_p50_ms=statistics.median(r.p50_ms for r in rounds),
            median_p95_ms=statistics.median(r.p95_ms for r in rounds),
            median_rss_mb=statistics.median(rss),
            min_rss_mb=min(rss),
            max_rss_mb=max(rss),
            errors=sum(r.errors for r in rounds),
            usd_per_million=price(rate),
        )

    def accuracy_of(self, task: str) -> TaskAccuracy:
        return next(a for a in self.accuracy if a.task == task)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultitaskMeasure:
    """The whole record: the tasks, both setups, and how the stream was run and priced."""

    tasks: list[str]
    multitask: SetupResult
    per_task_encoders: SetupResult
    instance: str  # the price table's measured instance the costs are priced as
    usd_per_hour: float
    price_table: str
    users: int  # closed-loop clients
    seconds_per_round: float
    warmup_seconds: float
    rounds: int
    command: str
    date: str  # ISO 8601, UTC
    schema_version: int = MULTITASK_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.tasks:
            raise MultitaskMeasureError("tasks must name at least one task")
        for setup in (self.multitask, self.per_task_encoders):
            have = sorted(a.task for a in setup.accuracy)
            if have != sorted(self.tasks):
                raise MultitaskMeasureError(
                    f"setup {setup.name!r} has accuracy for {have}, the record's tasks are "
                    f"{sorted(self.tasks)}: every task needs its accuracy in both setups"
                )
            if len(setup.rounds) != self.rounds:
                raise MultitaskMeasureError(
                    f"setup {setup.name!r} has {len(setup.rounds)} rounds, rounds says "
                    f"{self.rounds}"
                )
        _number("usd_per_hour", self.usd_per_hour)
        _number("users", self.users, low=1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MULTITASK_MEASURE_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, data: Any, where: str = MULTITASK_MEASURE_NAME) -> MultitaskMeasure:
        """The record from its JSON; a wrong version, key or value raises
        MultitaskMeasureError naming `where` and the field."""
        try:
            return cls._from_json(data)
        except MultitaskMeasureError as exc:
            raise MultitaskMeasureError(f"{where}: {exc}") from None

    @classmethod
    def _from_json(cls, data: Any) -> MultitaskMeasure:
        if not isinstance(data, dict):
            raise MultitaskMeasureError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != MULTITASK_SCHEMA_VERSION:
            raise MultitaskMeasureError(
                f"schema version {version!r}, this smallcls reads {MULTITASK_SCHEMA_VERSION}: "
                "measure again with `python -m bench.multitask_serving measure`"
            )
        fields = {**data}
        for key in ("multitask", "per_task_encoders"):
            fields[key] = _setup(data.get(key), key)
        return from_fields(cls, fields, "record", MultitaskMeasureError)

    @classmethod
    def read(cls, path: Path | str) -> MultitaskMeasure:
        path = Path(path)
        missing = f"{path} not found: write it with `python -m bench.multitask_serving measure`"
        data = read_json_object(path, MultitaskMeasureError, missing=missing)
        return cls.from_json(data, str(path))


def _setup(data: Any, where: str) -> SetupResult:
    if not isinstance(data, dict):
        raise MultitaskMeasureError(f"{where} must be a mapping, got {json.dumps(data)}")

    def items(key: str, kind: type) -> list[Any]:
        value = data.get(key)
        if not isinstance(value, list):
            raise MultitaskMeasureError(f"{where}.{key} must be a list, got {json.dumps(value)}")
        return [
            from_fields(kind, v, f"{where}.{key}[{i}]", MultitaskMeasureError)
            for i, v in enumerate(value)
        ]

    fields = {
        **data,
        "models": items("models", ServedModel),
        "accuracy": items("accuracy", TaskAccuracy),
        "rounds": items("rounds", StreamRound),
    }
    return from_fields(SetupResult, fields, where, MultitaskMeasureError)
