"""Config schema shared by the CLI and every stage: frozen dataclasses, loadable from YAML.

Unknown keys fail loudly (a typo must not silently fall back to a default), and each check
names the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.devices import DEVICES
from core.manifest import VARIANTS

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    name: str  # the run's and the exported model's name, e.g. "minilm"
    family: str  # encoder | extracted_encoder | causal_lm
    head: str = "mean_pool"  # mean_pool | last_token | label_words
    base_model: str = "minilm-l6"  # a known name (see pretrained.py), a local dir or a hub id
    # .jsonl/.json/.csv/.tsv (or .gz of each); see core/data.py for the formats and carving.
    train_path: str = "data/sst2/train.jsonl"
    test_path: str | None = "data/sst2/test.jsonl"  # None: a stratified test_fraction of train
    validation_path: str | None = None  # carved from train when None
    test_fraction: float = 0.2  # share of train carved as the test split when test_path is None
    text_column: str = "text"  # the columns (CSV/TSV header names or JSON keys) of those files
    label_column: str = "label"  # "labels" or a JSON list: multi-label (core/data.py)
    # A Hugging Face dataset name instead of the files (needs a network and `.[hub]`).
    hub_dataset: str | None = None
    train_rows: int | None = None  # seeded subsample of train (None = all)
    max_length: int = 64  # tokens; SST-2 sentences fit in 64 with room to spare
    epochs: float = 1.0
    batch_size: int = 32
    # Batches of similar lengths pad less: SST-2 mixes 2-word phrases and 50-word sentences.
    group_by_length: bool = True
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    threads: int = 2  # torch intra-op threads; fixed, or a busy core slows training ~50x
    layers: int | None = None  # extracted encoders: decoder layers kept
    prompt_template: str = "{text}"  # label_words: e.g. "Review: {text}\nSentiment:"
    label_words: dict[str, str] | None = None  # label name -> word scored after the prompt
    zero_shot: bool = False  # label_words only: evaluate without training
    device: str = "auto"  # auto | cpu | cuda
    val_fraction: float = 0.1
    max_val_rows: int = 500
    eval_batch_size: int = 64
    # A benchmark dataset by name (core/benchmarks.py BENCHMARKS: sst2, banking77, emotion, trec,
    # ag_news, goemotions, clinc150, imdb), read from datasets_dir (default ../shared/datasets);
    # it replaces train_path/test_path/validation_path.
    dataset: str | None = None
    datasets_dir: str | None = None
    test_rows: int | None = None  # seeded subsample of test: CPU budgets only, never published
    # Long inputs: keep the text's head, its tail, or both (head_tail: the first quarter of the
    # token budget from the start, the rest from the end). None = the dataset's choice, or
    # head (label_words prompts keep their end: tail).
    truncation: str | None = None
    # Out-of-scope rejection: the label given to texts the model is not confident about, with
    # a threshold tuned on validation. None: the benchmark's (CLINC150's "oos"), else none.
    oos_label: str | None = None
    class_weighting: str = "none"  # none | balanced (loss weights inversely to class counts)
    save_steps: int = 200  # checkpoint every N optimizer steps, so a killed run resumes
    # LoRA (peft) instead of full fine-tuning when lora_r > 0; adapters are merged before the
    # model is saved, so export sees a plain model.
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # module names; None = all attention and MLP linears
    # Label-word prompts only: k training examples per class put before each text.
    few_shot_k: int = 0
    # Extracted encoders: LLM2Vec's masked next-token prediction on the training texts (LoRA,
    # merged) before fine-tuning, so the decoder learns to use its new bidirectional view.
    mntp_steps: int = 0
    mntp_mask_prob: float = 0.2
    mntp_learning_rate: float = 1e-4
    # Distillation: a complete run whose soft labels (temperature-scaled) train this model;
    # distill_alpha weighs them against the gold labels (1.0 = soft labels only).
    teacher_run: str | None = None
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    unlabeled_path: str | None = None  # extra texts (JSONL 'text') labelled by the teacher

    def __post_init__(self) -> None:
        positive = ("max_length", "batch_size", "threads", "eval_batch_size", "max_val_rows")
        for field in positive:
            if getattr(self, field) < 1:
                raise ConfigError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.train_rows is not None and self.train_rows < 2:
            raise ConfigError(f"train_rows must be >= 2 or null, got {self.train_rows}")
        for field in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, field) < 1:
                raise ConfigError(f"{field} must be in (0, 1), got {getattr(self, field)}")
        self._check_data_files()
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if "{text}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain '{text}'")
        if self.head == "label_words" and not self.label_words:
            raise ConfigError("head 'label_words' needs label_words: {label: word, ...}")
        if self.zero_shot and self.head != "label_words":
            raise ConfigError("zero_shot works only with head 'label_words'")
        for field in ("test_rows", "lora_r", "few_shot_k", "mntp_steps"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise ConfigError(f"{field} must be >= 0, got {value}")
        if self.save_steps < 1:
            raise ConfigError(f"save_steps must be >= 1, got {self.save_steps}")
        if self.truncation not in (None, "head", "tail", "head_tail"):
            raise ConfigError(
                f"truncation must be head, tail, head_tail or null, got {self.truncation!r}"
            )
        if self.class_weighting not in ("none", "balanced"):
            raise ConfigError(
                f"class_weighting must be none or balanced, got {self.class_weighting!r}"
            )
        if self.few_shot_k and self.head != "label_words":
            raise ConfigError("few_shot_k works only with head 'label_words'")
        if self.mntp_steps and self.family != "extracted_encoder":
            raise ConfigError("mntp_steps applies only to family extracted_encoder")
        if not 0 < self.mntp_mask_prob < 1:
            raise ConfigError(f"mntp_mask_prob must be in (0, 1), got {self.mntp_mask_prob}")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.unlabeled_path and not self.teacher_run:
            raise ConfigError("unlabeled_path needs a teacher_run to label the texts")
        if self.dataset is not None:
            from core.data import BENCHMARKS

            if self.dataset not in BENCHMARKS:
                raise ConfigError(
                    f"dataset must be one of {sorted(BENCHMARKS)}, got {self.dataset!r}"
                )
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be non-empty without '/', got {self.name!r}")

    def _check_data_files(self) -> None:
        for field in ("text_column", "label_column"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{field} must be a non-empty column name, got {value!r}")
        custom = (self.text_column, self.label_column) != ("text", "label")
        if custom and self.dataset:
            # Benchmark files always use text/label; a column name for them would be ignored.
            raise ConfigError(
                "text_column/label_column name columns of train_path's files; benchmark "
                f"dataset {self.dataset!r} uses 'text' and 'label': drop them or use train_path"
            )
        if not self.train_path and not (self.dataset or self.hub_dataset):
            raise ConfigError("train_path must name a file (or set dataset or hub_dataset)")


def _check_variants(field: str, variants: object) -> None:
    """A non-empty list of export variant names, or a ConfigError naming `field`."""
    if not (isinstance(variants, list) and variants):
        raise ConfigError(f"{field} must be a non-empty list of variants, got {variants!r}")
    if bad := sorted(set(map(str, variants)) - set(VARIANTS)):
        raise ConfigError(f"{field} must be among {list(VARIANTS)}, got {bad}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    output_dir: str = "demo_output"
    models: list[TrainConfig] = dataclasses.field(default_factory=list)
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32", "int8"])
    # Variants for some models instead of `precisions`, by model name: a recipe worth its
    # export time on one family only (int8-fused is fast for BERT-style encoders, and keeps
    # every SmolLM2 MatMul in float after minutes of search).
    model_precisions: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    loadtest_users: int = 8  # users of a single run (kept for `smallcls loadtest` parity)
    loadtest_seconds: int = 15  # seconds per sweep step
    serve_threads: int = 2
    # Where the gate scores the exports and where the service runs them (core/devices.py):
    # export's `auto` checks fp16 on CUDA when there is one; `cuda` anywhere without a usable
    # CUDA provider is refused before anything runs. Training's device is each model's own.
    export_device: str = "auto"
    serve_device: str = "cpu"
    # The load test is a concurrency sweep: these user counts in turn, stopping once p95
    # passes the SLO (loadtests/sweep.py). The report prices the throughput at the SLO.
    loadtest_steps: list[int] = dataclasses.field(default_factory=lambda: [1, 4, 8])
    slo_p95_ms: float = 50.0
    # Tighter p95 targets the load test also finds the highest rate for, so that a report
    # prices every model at each (the answer page's latency targets).
    price_targets_ms: list[float] = dataclasses.field(default_factory=list)
    # The report recommends the cheapest model at or above this test accuracy.
    accuracy_floor: float = 0.85

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models must list at least one model to train")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        steps = self.loadtest_steps
        if not steps or any(not isinstance(u, int) or u < 1 for u in steps):
            raise ConfigError(f"loadtest_steps must be user counts >= 1, got {steps}")
        if steps != sorted(set(steps)):
            raise ConfigError(f"loadtest_steps must increase, got {steps}")
        if not self.slo_p95_ms > 0:
            raise ConfigError(f"slo_p95_ms must be > 0, got {self.slo_p95_ms}")
        if not 0 <= self.accuracy_floor <= 1:
            raise ConfigError(f"accuracy_floor must be in 0..1, got {self.accuracy_floor}")
        if any(not (isinstance(t, int | float) and t > 0) for t in self.price_targets_ms):
            raise ConfigError(f"price_targets_ms must be p95 targets > 0 ms, got "
                              f"{self.price_targets_ms}")  # fmt: skip
        for field in ("export_device", "serve_device"):
            if getattr(self, field) not in DEVICES:
                raise ConfigError(
                    f"{field} must be one of {list(DEVICES)}, got {getattr(self, field)!r}"
                )
        _check_variants("precisions", self.precisions)
        self._check_model_precisions(names)

    def _check_model_precisions(self, names: list[str]) -> None:
        if not isinstance(self.model_precisions, dict):
            raise ConfigError(
                "model_precisions must map model names to variant lists, got "
                f"{self.model_precisions!r}"
            )
        for name, variants in self.model_precisions.items():
            if name not in names:
                raise ConfigError(f"model_precisions names {name!r}, not one of {names}")
            _check_variants(f"model_precisions.{name}", variants)

    def precisions_for(self, name: str) -> list[str]:
        """The variants exported (and load-tested) for the model called `name`."""
        return self.model_precisions.get(name, self.precisions)


def _coerce(cls_name: str, field: str, annotation: Any, value: Any) -> Any:
    """Build nested config dataclasses from plain mappings; check the simple types."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{cls_name}.{field} must be a list, got {value!r}")
        return [from_mapping(args[0], item) for item in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "3e-5" (no dot) as a string: a common trap for learning rates.
        try:
            return float(value)
        except ValueError:
            pass
    simple = {int: int, float: float, str: str, bool: bool}
    if annotation in simple and not isinstance(value, simple[annotation]):
        got = f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{cls_name}.{field} must be {annotation.__name__}, got {got}")
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{cls_name}.{field} must be int, got bool {value!r}")
    return value


def from_mapping(cls: type[T], data: dict[str, Any]) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(fields)}")
    kwargs = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from the CLI; values are parsed as YAML (so 3 is an int)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def load_config(cls: type[T], path: Path | str | None, overrides: dict[str, Any]) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data.update(loaded)
    data.update(overrides)
    return from_mapping(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
