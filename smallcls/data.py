"""Labelled text datasets from JSON Lines or CSV files (or a Hugging Face dataset name).

Rows are `{"text": ..., "label": name}` (or `"labels": [names]` for multi-label). Label names
are kept end to end: a model's logit i always means `labels[i]`, in the order recorded here.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[str]  # label names, one per text

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DatasetError(f"{len(self.texts)} texts but {len(self.labels)} labels")

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

    def label_ids(self, split: Split) -> list[int]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[name] for name in split.labels]


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
    labels: list[str] = []
    for lineno, row in _rows(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}:{lineno}: field 'text' must be a non-empty string")
        if "label" not in row:
            if "labels" in row:
                raise DatasetError(
                    f"{path}:{lineno}: multi-label rows ('labels') are not supported yet; "
                    "use single-label data with a 'label' field"
                )
            raise DatasetError(f"{path}:{lineno}: missing field 'label'")
        texts.append(text)
        labels.append(str(row["label"]))
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
    return sorted({label for split in splits for label in split.labels})


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
    labels = label_order([train, validation, test])
    missing = sorted(set(test.labels) - set(train.labels))
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
