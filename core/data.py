"""Labelled text datasets from JSON Lines or CSV files (or a Hugging Face dataset name).

Rows are `{"text": ..., "label": name}` (or `"labels": [names]` for multi-label). Label names
are kept end to end: a model's logit i always means `labels[i]`, in the order recorded here.
A split is single-label or multi-label as a whole; mixing the two in one file is an error.

`BENCHMARKS` names the eight benchmark datasets in `../shared/datasets` (read by path, never
copied into the repo), with their task type, out-of-scope label, truncation strategy for long
inputs and the published reference results quoted by that folder's README.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Split:
    texts: list[str]
    # One label name per text, or (multi-label) a tuple of names per text, possibly empty.
    labels: list[str] | list[tuple[str, ...]]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DatasetError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    @property
    def multi_label(self) -> bool:
        return bool(self.labels) and isinstance(self.labels[0], tuple)

    def label_names(self) -> set[str]:
        if self.multi_label:
            return {name for names in self.labels for name in names}
        return set(self.labels)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.texts)

    def subsample(self, n: int | None, seed: int) -> Split:
        """A seeded random subset of n rows (all rows when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split

    @property
    def problem_type(self) -> str:
        return "multi_label" if self.train.multi_label else "single_label"

    def label_ids(self, split: Split) -> list[int]:
        if split.multi_label:
            raise DatasetError(f"{self.name} is multi-label: use label_matrix(), not label_ids()")
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[name] for name in split.labels]  # type: ignore[index]

    def label_matrix(self, split: Split) -> np.ndarray:
        """(N, L) 0/1 float matrix of a multi-label split, columns in `label_names` order."""
        index = {name: i for i, name in enumerate(self.label_names)}
        out = np.zeros((len(split), len(self.label_names)), dtype=np.float32)
        for row, names in enumerate(split.labels):
            names = names if isinstance(names, tuple) else (names,)
            for name in names:
                out[row, index[name]] = 1.0
        return out


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    fmt = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    with _open_text(path) as handle:
        if fmt in ("jsonl", "json"):
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, row
        elif fmt in ("csv", "tsv"):
            reader = csv.DictReader(handle, delimiter="\t" if fmt == "tsv" else ",")
            for lineno, row in enumerate(reader, 2):
                yield lineno, row
        else:
            raise DatasetError(f"{path}: unsupported format {fmt!r}; use .jsonl, .csv or .tsv")


def read_split(path: Path | str) -> Split:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    texts: list[str] = []
    labels: list = []
    multi: bool | None = None  # decided by the first row; every row must agree
    for lineno, row in _rows(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}:{lineno}: field 'text' must be a non-empty string")
        if "label" in row:
            row_multi, value = False, str(row["label"])
        elif "labels" in row:
            names = row["labels"]
            if isinstance(names, str):  # CSV/TSV: names separated by commas
                names = [n.strip() for n in names.split(",") if n.strip()]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DatasetError(f"{path}:{lineno}: field 'labels' must be a list of names")
            row_multi, value = True, tuple(names)
        else:
            raise DatasetError(f"{path}:{lineno}: missing field 'label' (or 'labels')")
        if multi is None:
            multi = row_multi
        elif multi != row_multi:
            raise DatasetError(
                f"{path}:{lineno}: mixes single-label ('label') and multi-label ('labels') rows"
            )
        texts.append(text)
        labels.append(value)
    if not texts:
        raise DatasetError(f"{path}: no rows")
    return Split(texts, labels)


def carve_validation(
    train: Split, fraction: float, max_rows: int, seed: int
) -> tuple[Split, Split]:
    """Hold out a seeded validation split from train when the dataset ships none."""
    n_val = min(max_rows, max(1, int(len(train) * fraction)))
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    pick = lambda idx: Split([train.texts[i] for i in idx], [train.labels[i] for i in idx])  # noqa: E731
    return pick(train_idx), pick(val_idx)


def label_order(splits: Sequence[Split]) -> list[str]:
    """Label names sorted, so the same data always gives the same logit order."""
    return sorted(set().union(*(split.label_names() for split in splits)))


def load_dataset(
    train_path: Path | str,
    test_path: Path | str,
    *,
    validation_path: Path | str | None = None,
    val_fraction: float = 0.1,
    max_val_rows: int = 500,
    seed: int = 0,
    name: str = "",
) -> Dataset:
    train = read_split(train_path)
    test = read_split(test_path)
    if validation_path:
        validation = read_split(validation_path)
    else:
        train, validation = carve_validation(train, val_fraction, max_val_rows, seed)
    if len({train.multi_label, validation.multi_label, test.multi_label}) > 1:
        raise DatasetError("train, validation and test mix single- and multi-label rows")
    labels = label_order([train, validation, test])
    missing = sorted(test.label_names() - train.label_names())
    if missing:
        raise DatasetError(f"test labels {missing} never occur in the training data")
    return Dataset(name or Path(train_path).parent.name, labels, train, validation, test)


def load_hub_dataset(
    name: str, *, text_field: str = "text", label_field: str = "label", seed: int = 0
) -> Dataset:  # pragma: no cover - needs a network
    """A Hugging Face dataset by name, for users with a network (`pip install smallcls[hub]`)."""
    try:
        import datasets as hf_datasets
    except ImportError as exc:
        raise DatasetError("install the 'hub' extra to load datasets by name") from exc
    ds = hf_datasets.load_dataset(name)
    feature = ds["train"].features[label_field]
    to_name = feature.int2str if hasattr(feature, "int2str") else str

    def split(part: str) -> Split:
        rows = ds[part]
        return Split(list(rows[text_field]), [to_name(x) for x in rows[label_field]])

    train = split("train")
    test_part = "test" if "test" in ds else "validation"
    test = split(test_part)
    if "validation" in ds and test_part != "validation":
        validation = split("validation")
    else:
        train, validation = carve_validation(train, 0.1, 500, seed)
    return Dataset(name, label_order([train, validation, test]), train, validation, test)


# --- The benchmark datasets ---------------------------------------------------------------

Truncation = str  # "head" | "tail" | "head_tail"
TRUNCATIONS = ("head", "tail", "head_tail")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Benchmark:
    """One dataset folder under `../shared/datasets` and what is known about it."""

    name: str
    train: str  # file names inside the folder
    test: str
    validation: str | None = None
    problem_type: str = "single_label"  # or multi_label
    oos_label: str | None = None  # out-of-scope label, rejected by a confidence threshold
    # Long inputs: IMDB reviews run to 1,000+ tokens; head+tail keeps the opening and the
    # verdict at the end (Sun et al. 2019, "How to fine-tune BERT", best on IMDB).
    truncation: Truncation = "head"
    max_length: int = 64  # tokens that hold nearly all rows (IMDB: the model's limit)
    metric: str = "accuracy"  # the headline metric the published reference uses
    reference: str = ""  # published results, from ../shared/datasets/README.md
    reference_value: float | None = None  # the fine-tuned BERT-base figure, for the table
    note: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            name="sst2",
            train="train.jsonl",
            test="test.jsonl",
            reference="BERT-base ≈ 93% (GLUE test); RoBERTa-large ≈ 96.4% (dev)",
            reference_value=0.93,
            note="test = GLUE dev (872 rows)",
        ),
        Benchmark(
            name="banking77",
            train="train.jsonl",
            test="test.jsonl",
            reference="Casanueva et al. 2020: fine-tuned BERT ≈ 93.7%, USE+ConveRT ≈ 93.4%",
            reference_value=0.937,
        ),
        Benchmark(
            name="emotion",
            train="train.jsonl",
            test="test.jsonl",
            validation="validation.jsonl",
            reference="DistilBERT ≈ 93%, BERT-base ≈ 94% (model cards)",
            reference_value=0.94,
        ),
        Benchmark(
            name="trec",
            train="train.jsonl",
            test="test.jsonl",
            reference="SVM+features 95.0%; CNN 93.6%; BERT ≈ 96–97%",
            reference_value=0.965,
        ),
        Benchmark(
            name="ag_news",
            train="train_subsample.jsonl",
            test="test.jsonl",
            max_length=128,
            reference="BERT-base ≈ 94.8% on the full 120k train set (not comparable: 5k here)",
            reference_value=0.948,
            note="train = 5,000-row subsample of 120,000",
        ),
        Benchmark(
            name="goemotions",
            train="train.jsonl",
            test="test.jsonl",
            validation="validation.jsonl",
            problem_type="multi_label",
            metric="macro_f1",
            reference="Demszky et al. 2020: BERT-base macro-F1 ≈ 0.46 (28 labels)",
            reference_value=0.46,
        ),
        Benchmark(
            name="clinc150",
            train="train.jsonl",
            test="test.jsonl",
            validation="validation.jsonl",
            oos_label="oos",
            metric="in_scope_accuracy",
            reference="Larson et al. 2019: BERT ≈ 96–97% in-scope, OOS recall ≈ 40–50%",
            reference_value=0.965,
        ),
        Benchmark(
            name="imdb",
            train="train.jsonl.gz",
            test="test.jsonl.gz",
            truncation="head_tail",
            max_length=512,
            reference="Maas et al. 2011 ≈ 88.9%; BERT-base ≈ 94.6%",
            reference_value=0.946,
        ),
    ]
}


def default_datasets_dir() -> Path:
    """`../shared/datasets` next to the repository, unless SMALLCLS_DATASETS says otherwise."""
    env = os.environ.get("SMALLCLS_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_paths(name: str, root: Path | str | None = None) -> dict[str, Path | None]:
    """{"train", "test", "validation"} file paths of a benchmark dataset (validation may be
    None: then it is carved from train)."""
    info = benchmark(name)
    folder = Path(root) if root else default_datasets_dir()
    folder = folder / info.name
    if not folder.is_dir():
        raise DatasetError(
            f"dataset folder {folder} not found; set datasets_dir or SMALLCLS_DATASETS"
        )
    return {
        "train": folder / info.train,
        "test": folder / info.test,
        "validation": folder / info.validation if info.validation else None,
    }
