"""The run record: what a training run promises the stages after it.

`<run>/contract.json` holds the resolved dataset files, the label order, the preprocessing
and the decision rule that training evaluated with; `<run>/test_predictions.jsonl` holds
the run's own answer for every test row under that rule. Export copies the contract into each
manifest, and a served model is checked against those predictions: what was evaluated is what
is served.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from core.data import DataSource
from core.decision import DecisionRule
from core.fields import read_json_object
from core.preprocessing import Preprocessing

RUN_RECORD_NAME = "contract.json"
PREDICTIONS_NAME = "test_predictions.jsonl"
RUN_SCHEMA_VERSION = 1

Task = Literal["single_label", "multi_label", "multi_task"]


class RunRecordError(ValueError):
    """A run without a usable contract; the message says what to do."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    name: str
    family: str
    head: str
    base_model: str
    task: Task
    labels: list[str]  # logit i is labels[i]
    preprocessing: Preprocessing
    decision: DecisionRule
    dataset: DataSource
    schema_version: int = RUN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.decision.labels != self.labels:
            raise RunRecordError("the decision rule's labels differ from the run's labels")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / RUN_RECORD_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = RUN_RECORD_NAME) -> RunRecord:
        version = data.get("schema_version")
        if version != RUN_SCHEMA_VERSION:
            raise RunRecordError(
                f"{where} has schema version {version!r}, this smallcls reads "
                f"{RUN_SCHEMA_VERSION}: train the run again with this version"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise RunRecordError(f"{where}: unknown keys {unknown}")
        try:
            return cls(
                **{
                    **data,
                    "preprocessing": Preprocessing.from_dict(data["preprocessing"]),
                    "decision": DecisionRule.from_dict(data["decision"]),
                    "dataset": DataSource.from_dict(data["dataset"]),
                }
            )
        except (KeyError, TypeError) as exc:
            raise RunRecordError(f"{where} is incomplete ({exc}): train the run again") from None

    @classmethod
    def read(cls, run_dir: Path | str) -> RunRecord:
        path = Path(run_dir) / RUN_RECORD_NAME
        missing = (
            f"{run_dir} has no {RUN_RECORD_NAME}: it was trained by an older smallcls or "
            "is not a run directory; train it again with `smallcls train`"
        )
        data = read_json_object(path, RunRecordError, missing=missing, todo="; train again")
        return cls.from_dict(data, str(path))


def write_predictions(run_dir: Path, answers: list[dict[str, Any]]) -> Path:
    """One JSON object per test row, in test-file order: {"label", "labels", "rejected"}."""
    path = Path(run_dir) / PREDICTIONS_NAME
    with open(path, "w", encoding="utf-8") as handle:
        for answer in answers:
            handle.write(json.dumps(answer, ensure_ascii=False) + "\n")
    return path


def read_predictions(run_dir: Path | str) -> list[dict[str, Any]]:
    path = Path(run_dir) / PREDICTIONS_NAME
    if not path.is_file():
        raise RunRecordError(f"{path} not found: the run predates saved predictions")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
