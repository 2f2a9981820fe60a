"""The model manifest: the contract between export (writes it) and the service (reads it).

A model directory holds `model.onnx`, `tokenizer.json` and `manifest.json`. The manifest says
everything the server needs to turn texts into labels without knowing which family made the
graph, plus the evidence that this very file is good (accuracy, parity, sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
SCHEMA_VERSION = 1

Family = Literal["encoder", "extracted_encoder", "causal_lm"]
Precision = Literal["fp32", "int8", "fp16"]
# What `smallcls export --variants` can build, in build order (fp32 is every other's parent).
VARIANTS = ("fp32", "fp32-opt", "int8", "int8-static", "fp16")
# Multi-class models pick one label (softmax); multi-label models pick every label whose
# sigmoid clears its threshold. Mixing them up silently gives wrong answers, so it is explicit.
ProblemType = Literal["single_label", "multi_label"]


class ManifestError(ValueError):
    """A model directory that cannot be served as it is; the message says what to do."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str  # how clients address the model, e.g. "minilm-int8"
    family: Family
    head: str  # e.g. "mean_pool", "last_token", "label_words"
    base_model: str  # where the pretrained weights came from
    labels: list[str]  # index i of the graph's logits is labels[i]
    max_length: int  # tokens, after the prompt template is applied
    precision: Precision
    pad_token_id: int
    pad_token: str
    truncation_side: Literal["left", "right"] = "right"
    problem_type: ProblemType = "single_label"
    # multi_label only: one sigmoid threshold per label, tuned on validation at training time.
    thresholds: list[float] | None = None
    # "{text}" for plain classifiers; label-word models wrap the text in their prompt.
    prompt_template: str = "{text}"
    source_run: str = ""
    parameters: int = 0
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> sha256
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # accuracy of this file
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)  # vs torch / vs fp32
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)  # how int8 was made
    # The export variant (fp32, fp32-opt, int8, int8-static, fp16); "" in older manifests.
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
        if self.max_length < 2:
            raise ManifestError(f"manifest.max_length must be >= 2, got {self.max_length}")
        if "{text}" not in self.prompt_template:
            raise ManifestError("manifest.prompt_template must contain '{text}'")
        if self.problem_type not in ("single_label", "multi_label"):
            raise ManifestError(
                f"manifest.problem_type must be 'single_label' or 'multi_label', "
                f"got {self.problem_type!r}"
            )
        if self.thresholds is not None:
            if self.problem_type != "multi_label":
                raise ManifestError("manifest.thresholds is only meaningful for multi_label")
            if len(self.thresholds) != len(self.labels) or not all(
                0.0 < t < 1.0 for t in self.thresholds
            ):
                raise ManifestError(
                    f"manifest.thresholds must hold one value in (0, 1) per label "
                    f"({len(self.labels)}), got {self.thresholds!r}"
                )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(
                f"unknown manifest keys {unknown}; was it written by a newer smallcls?"
            )
        try:
            return cls(**data)
        except TypeError as exc:  # a required key is missing
            raise ManifestError(f"incomplete manifest: {exc}") from exc

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: pass a directory written by `smallcls export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def fill_template(template: str, texts: Sequence[str]) -> list[str]:
    """Put each text into a prompt template. Training, export and the server all call this:
    if they filled prompts differently, the served model would see other tokens than it
    was trained and checked on."""
    return [template.replace("{text}", text) for text in texts]


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
