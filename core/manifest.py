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
from pathlib import Path
from typing import Any, Literal

from core.decision import DecisionError, DecisionRule
from core.fields import read_json_object
from core.preprocessing import Preprocessing, PreprocessingError

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
                }
            )
        except KeyError as exc:
            raise ManifestError(f"incomplete manifest: no {exc}; re-export the run") from None
        except TypeError as exc:  # a required key is missing
            raise ManifestError(f"incomplete manifest: {exc}") from exc
        except (PreprocessingError, DecisionError) as exc:
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
