"""The model manifest: the contract between export (writes it) and the service (reads it).

A model directory holds `model.onnx`, `tokenizer.json` and `manifest.json`. The manifest says
everything the server needs to turn texts into labels without knowing which family made the
graph (the run's preprocessing and decision rule, copied unchanged), plus the evidence that
this very file is good (accuracy, parity, sha256) and the dataset files it was measured on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.decision import DecisionError, DecisionRule
from core.fields import read_json_object
from core.preprocessing import Preprocessing, PreprocessingError, fill_template

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
# 2: the preprocessing and decision contract replaced max_length, truncation_side,
# prompt_template, pad token, problem_type and thresholds; the dataset files are named.
SCHEMA_VERSION = 2

Family = Literal["encoder", "extracted_encoder", "causal_lm"]
Precision = Literal["fp32", "int8", "fp16"]
# What `smallcls export --variants` can build, in build order (fp32 is every other's parent).
VARIANTS = (
    "fp32",
    "fp32-opt",
    "int8",
    "int8-static",
    "fp16",
    # Measured int8 recipes (export/int8_recipes.py).
    "int8-fused",
    "int8-smooth",
    "int8-w8",
    "int8-mixed",
)


class ManifestError(ValueError):
    """A model directory that cannot be served as it is; the message says what to do."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str  # how clients address the model, e.g. "minilm-int8"
    family: Family
    head: str  # e.g. "mean_pool", "last_token", "label_words"
    base_model: str  # where the pretrained weights came from
    labels: list[str]  # index i of the graph's logits is labels[i]
    precision: Precision
    # The run's contract, copied unchanged: texts -> ids, and logits -> answers.
    preprocessing: Preprocessing
    decision: DecisionRule
    # The dataset files the run was trained and evaluated on (core.data.DataSource).
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    source_run: str = ""
    parameters: int = 0
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> sha256
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # accuracy of this file
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)  # vs torch / vs fp32
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)  # how int8 was made
    # The export variant (fp32, fp32-opt, int8, int8-static, fp16).
    variant: str = ""
    optimization: dict[str, Any] = dataclasses.field(default_factory=dict)  # fusions, fp16
    file_sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # file name -> bytes
    # The accuracy gate vs the fp32 parent: passed, forced, reasons, agreement, max diff.
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Where this file was checked: {"cpu": bool, "gpu": bool, "notes": [...]}.
    verified_on: dict[str, Any] = dataclasses.field(default_factory=dict)
    created_at: str = ""
    # A multi-task model (TaskRule, below): each task's prompt, label words, logit columns and
    # rule; `labels` are then every task's words. Empty for a model of one task.
    tasks: list[TaskRule] = dataclasses.field(default_factory=list)
    # A prompted label-word model with a cached prompt prefix (export/prefix_cache.py): the
    # graph with past keys/values, and its check against the plain graph. Empty without one.
    prefix_cache: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ManifestError(
                f"manifest.name must be a non-empty name without '/': {self.name!r}"
            )
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ManifestError(f"manifest.labels must be >= 2 distinct names, got {self.labels!r}")
        if self.decision.labels != self.labels:
            raise ManifestError("manifest.decision.labels differ from manifest.labels")
        try:
            check_tasks(self.tasks, len(self.labels))
        except TaskError as exc:
            raise ManifestError(f"manifest.tasks: {exc}") from None

    # The contract's fields most readers need, under their old names.
    @property
    def max_length(self) -> int:
        return self.preprocessing.max_length

    @property
    def prompt_template(self) -> str:
        return self.preprocessing.prompt_template

    @property
    def problem_type(self) -> str:
        return self.decision.problem_type

    @property
    def thresholds(self) -> list[float] | None:
        return self.decision.thresholds

    @property
    def test_path(self) -> Path | None:
        """The test file the run was evaluated on (a carved split is saved as a file too)."""
        path = self.dataset.get("test_path")
        return Path(path) if path else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version != SCHEMA_VERSION:
            todo = (
                "upgrade smallcls"
                if isinstance(version, int) and version > SCHEMA_VERSION
                else "re-export the run with `smallcls export`"
            )
            raise ManifestError(
                f"manifest schema version {version!r}, this smallcls reads {SCHEMA_VERSION}: {todo}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(
                f"unknown manifest keys {unknown}; was it written by a newer smallcls?"
            )
        try:
            return cls(
                **{
                    **data,
                    "preprocessing": Preprocessing.from_dict(data["preprocessing"]),
                    "decision": DecisionRule.from_dict(data["decision"]),
                    "tasks": [TaskRule.from_dict(t) for t in data.get("tasks", [])],
                }
            )
        except KeyError as exc:
            raise ManifestError(f"incomplete manifest: no {exc}; re-export the run") from None
        except TypeError as exc:  # a required key is missing
            raise ManifestError(f"incomplete manifest: {exc}") from exc
        except (PreprocessingError, DecisionError, TaskError) as exc:
            raise ManifestError(f"manifest: {exc}") from exc

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_NAME
        missing = f"{path} not found: pass a directory written by `smallcls export`"
        return cls.from_dict(read_json_object(path, ManifestError, missing=missing))


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    """Refuse a model whose files differ from what export measured: a silent swap or a
    truncated copy would otherwise serve wrong answers with a good-looking manifest."""
    if not manifest.files:
        raise ManifestError(f"{model_dir}: manifest lists no file hashes; re-export the model")
    for name, expected in manifest.files.items():
        path = Path(model_dir) / name
        if not path.is_file():
            raise ManifestError(f"{path} is missing (listed in the manifest)")
        actual = sha256_of(path)
        if actual != expected:
            raise ManifestError(
                f"{path} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…: "
                "the file was altered or copied incompletely; re-export it"
            )


# ---- multi-task models ----------------------------------------------------------------------
# A multi-task causal LM (training/multitask.py) scores the union of every task's label WORDS
# after the task's own prompt; each task then reads only its own words' logits and decides with
# its own rule. Training writes one `TaskRule` per task into the run (`<run>/multitask.json`),
# export copies them unchanged into the manifest, and the service applies them: the prompt
# before the forward pass, the column selection and the decision after it. So one graph serves
# every task, and a batch may mix tasks (rows are told apart only after the graph ran).

MULTITASK_NAME = "multitask.json"  # in a multi-task run: {"tasks": [TaskRule, ...]}


class TaskError(ValueError):
    """A task record that cannot be applied; the message names the field."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskRule:
    name: str  # how clients select the task, e.g. "sst2"
    prompt_template: str  # "Review: {text}\nSentiment:"
    label_words: dict[str, str]  # the task's label name -> its word, e.g. {"positive": " good"}
    columns: list[int]  # the model's logit index of each label's word, in decision.labels order
    decision: DecisionRule  # over the task's own labels
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)  # core.data.DataSource

    def __post_init__(self) -> None:
        if not self.name:
            raise TaskError("task name must be non-empty")
        if "{text}" not in self.prompt_template:
            raise TaskError(f"task {self.name!r}: prompt_template must contain '{{text}}'")
        if len(self.columns) != len(self.decision.labels):
            raise TaskError(
                f"task {self.name!r}: {len(self.columns)} columns for "
                f"{len(self.decision.labels)} labels"
            )
        if sorted(self.label_words) != sorted(self.decision.labels):
            raise TaskError(f"task {self.name!r}: label_words do not name its labels")

    @property
    def labels(self) -> list[str]:
        return self.decision.labels

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The strings the model reads: each text in this task's prompt."""
        return fill_template(self.prompt_template, texts)

    def select(self, logits: np.ndarray) -> np.ndarray:
        """(N, W) logits over every task's words -> (N, L) over this task's labels."""
        return np.asarray(logits)[:, self.columns]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRule:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise TaskError(f"task record: unknown keys {unknown}")
        try:
            return cls(**{**data, "decision": DecisionRule.from_dict(data["decision"])})
        except KeyError as exc:
            raise TaskError(f"task record: no {exc}") from None
        except (TypeError, DecisionError) as exc:
            raise TaskError(f"task record: {exc}") from None


def check_tasks(tasks: Sequence[TaskRule], width: int) -> None:
    """Distinct names, and every column inside a (N, width) logits row."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise TaskError(f"task names must be distinct, got {names}")
    for task in tasks:
        if any(not 0 <= c < width for c in task.columns):
            raise TaskError(f"task {task.name!r}: columns {task.columns} outside 0..{width - 1}")
