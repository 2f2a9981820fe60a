"""Labelled text datasets from JSON Lines, CSV or TSV files (or a Hugging Face dataset name).

Formats, by suffix (each may also be gzipped, `.gz`): `.jsonl`/`.json` one JSON object per
line; `.csv` with a header line and RFC 4180 quoting; `.tsv` with a header line, cells taken
literally (no quoting, as GLUE's and GoEmotions' files are: quotes are text, a tab ends a cell).

Columns: the text is in `text_column` ("text"), the label in `label_column` ("label"). Rows
without "label" fall back to "labels" (multi-label). A column is multi-label when it holds a
JSON list, or when it is named "labels" (in CSV/TSV its cell lists names separated by commas);
any other cell is one label name, commas included ("Sci/Tech, World" stays one label). So a
CSV with comma-separated names must call that column "labels".

Label names are kept end to end: a model's logit i always means `labels[i]`, in the order
recorded here. A split is single-label or multi-label as a whole; mixing them is an error.

Carving: without a test file, a seeded stratified `test_fraction` of train becomes the test
split; without a validation file, a stratified `val_fraction` of what remains (at most
`max_val_rows`) becomes validation (see `carve_split`).

`BENCHMARKS` (core/benchmarks.py, re-exported here) names the benchmark datasets in
`../shared/datasets`, read by path, never copied into the repo.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# Re-exported, so `from core.data import BENCHMARKS, benchmark, benchmark_paths` keeps working.
from core.benchmarks import BENCHMARKS as BENCHMARKS
from core.benchmarks import Benchmark as Benchmark
from core.benchmarks import benchmark as benchmark
from core.benchmarks import benchmark_paths
from core.benchmarks import default_datasets_dir as default_datasets_dir
from core.tables import DatasetError as DatasetError
from core.tables import label_cell, rows, text_cell

if TYPE_CHECKING:
    from core.config import TrainConfig


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
    """Where a dataset's splits really came from: every run, manifest, load test and report
    row names these files, never a config default."""

    name: str  # a benchmark name, or the training file's folder for a user's files
    train_path: str
    test_path: str | None = None  # None: carved from train_path
    validation_path: str | None = None  # None: carved from train_path
    text_column: str = "text"
    label_column: str = "label"
    test_rows: int | None = None  # validation and test subsampled to this many rows
    hub_dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSource:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise DatasetError(f"unknown dataset keys {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    source: DataSource | None = None

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


def read_split(
    path: Path | str, *, text_column: str = "text", label_column: str = "label"
) -> Split:
    """A labelled split from a .jsonl/.json/.csv/.tsv file (or its .gz)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; check the path (relative to {Path.cwd()})")
    texts: list[str] = []
    labels: list = []
    for lineno, row in rows(path, require=text_column):
        text = text_cell(path, lineno, row, text_column)
        if not text.strip():
            raise DatasetError(
                f"{path}:{lineno}: empty text in column {text_column!r}; fill it in or drop the row"
            )
        label = label_cell(path, lineno, row, label_column)
        # Every row must agree with the first on single- vs multi-label.
        if labels and isinstance(label, tuple) != isinstance(labels[0], tuple):
            raise DatasetError(
                f"{path}:{lineno}: mixes single-label ('label') and multi-label ('labels') rows"
            )
        texts.append(text)
        labels.append(label)
    return Split(texts, labels)


def read_text_column(path: Path | str, text_column: str = "text") -> list[str]:
    """The non-blank texts of a file, labels not needed (texts to send, not to train on, so a
    blank one is skipped rather than refused)."""
    path = Path(path)
    texts = []
    for lineno, row in rows(path, require=text_column):
        text = text_cell(path, lineno, row, text_column)
        if text.strip():
            texts.append(text)
    return texts


def write_split(path: Path | str, split: Split) -> Path:
    """A split as JSON Lines with the standard columns ({"text","label"} or {"text","labels"}),
    so that read_split(path) gives it back."""
    path = Path(path)
    key = "labels" if split.multi_label else "label"
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in zip(split.texts, split.labels, strict=True):
            value = list(label) if split.multi_label else label
            handle.write(json.dumps({"text": text, key: value}, ensure_ascii=False) + "\n")
    return path


# --- Carving splits -------------------------------------------------------------------------


def _pick(split: Split, idx: Sequence[int]) -> Split:
    return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])


def _names(label: str | tuple[str, ...]) -> tuple[str, ...]:
    return label if isinstance(label, tuple) else (label,)


def _strata(split: Split) -> dict[Any, list[int]]:
    """Row indices per label, or (multi-label) per label set: the groups a carve samples."""
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(split.labels):
        key = tuple(sorted(label)) if isinstance(label, tuple) else label
        groups.setdefault(key, []).append(i)
    return groups


def _quotas(sizes: dict[Any, int], n: int, keep_one: bool, rng: random.Random) -> dict[Any, int]:
    """Rows to take from each stratum: n shared in proportion to the strata's sizes, by largest
    remainder (ties drawn at random). With keep_one, a stratum keeps at least one row."""
    total = sum(sizes.values())
    keys = sorted(sizes)
    tiebreak = {key: rng.random() for key in keys}
    exact = {key: n * sizes[key] / total for key in keys}
    room = {key: sizes[key] - 1 if keep_one else sizes[key] for key in keys}
    quota = {key: min(int(exact[key]), room[key]) for key in keys}
    short = n - sum(quota.values())
    for key in sorted(keys, key=lambda k: (int(exact[k]) - exact[k], tiebreak[k])):
        if short <= 0:
            break
        if quota[key] < room[key]:
            quota[key] += 1
            short -= 1
    return quota


def carve_split(
    split: Split, fraction: float, max_rows: int | None, seed: int
) -> tuple[Split, Split]:
    """(rest, carved): a seeded, stratified `fraction` of the rows (at most max_rows) held out.

    Single-label: each label gives its share of the carved rows (largest remainder) and always
    keeps one row in rest, so a rare label stays in training and is never lost. Multi-label:
    strata are label sets (so common combinations keep their share, rare ones fall where the
    draw puts them), then any carved row carrying a label that rest would lack goes back to
    rest. Rows keep their file order in both parts."""
    if not 0 < fraction < 1:
        raise DatasetError(f"a carved fraction must be in (0, 1), got {fraction}")
    if len(split) < 2:
        return split, _pick(split, [])
    n = max(1, int(len(split) * fraction))
    n = n if max_rows is None else min(n, max_rows)
    rng = random.Random(seed)
    strata = _strata(split)
    sizes = {key: len(rows) for key, rows in strata.items()}
    quota = _quotas(sizes, n, not split.multi_label, rng)
    carved: set[int] = set()
    for key in sorted(strata):
        rows = list(strata[key])
        rng.shuffle(rows)
        carved.update(rows[: quota[key]])
    rest_names = {
        name for i in range(len(split)) if i not in carved for name in _names(split.labels[i])
    }
    carved = {i for i in carved if set(_names(split.labels[i])) <= rest_names}
    rest = [i for i in range(len(split)) if i not in carved]
    return _pick(split, rest), _pick(split, sorted(carved))


def carve_validation(
    train: Split, fraction: float, max_rows: int, seed: int
) -> tuple[Split, Split]:
    """Hold out a seeded, stratified validation split from train (see carve_split)."""
    return carve_split(train, fraction, max_rows, seed)


# --- Loading a dataset ----------------------------------------------------------------------


def label_order(splits: Sequence[Split]) -> list[str]:
    """Label names sorted, so the same data always gives the same logit order."""
    return sorted(set().union(*(split.label_names() for split in splits)))


def _check_train(train: Split, path: Path | str) -> None:
    names = sorted(train.label_names())
    if len(names) < 2:
        got = f"only the label {names[0]!r}" if names else "no labels at all"
        raise DatasetError(
            f"{path}: the training data has {got}; a classifier needs rows of at least two "
            "labels: add rows of another label"
        )


def _check_against_train(split: Split, part: str, path: Path | str, train: Split) -> None:
    if split.multi_label != train.multi_label:
        kinds = ("multi-label", "single-label")
        got, want = kinds if split.multi_label else kinds[::-1]
        raise DatasetError(f"{path}: {part} rows are {got} but training rows are {want}")
    if unseen := sorted(split.label_names() - train.label_names()):
        raise DatasetError(
            f"{path}: {part} labels {unseen} never occur in the training data; add training "
            f"rows for them or drop those {part} rows"
        )


def check_splits(
    train: Split,
    validation: Split | None = None,
    test: Split | None = None,
    *,
    train_path: Path | str,
    validation_path: Path | str | None = None,
    test_path: Path | str | None = None,
) -> None:
    """The checks a dataset passes before any training: two labels or more in train, the same
    task type everywhere, and no validation or test label that training never saw. A split
    without a path of its own was carved from train_path; a split not given is not checked
    (train alone: before carving from it)."""
    _check_train(train, train_path)
    if test is not None:
        _check_against_train(test, "test", test_path or train_path, train)
    if validation is not None:
        _check_against_train(validation, "validation", validation_path or train_path, train)


def carve_part(
    train: Split, part: str, fraction: float, max_rows: int | None, seed: int, path: Path | str
) -> tuple[Split, Split]:
    """`carve_split`, refusing with what to do when nothing could be carved."""
    rest, carved = carve_split(train, fraction, max_rows, seed)
    if not len(carved):
        raise DatasetError(
            f"{path}: cannot carve a {part} split from {len(train)} training rows: no label has "
            f"two rows or more; add rows or give a {part}_path"
        )
    return rest, carved


def load_dataset(
    train_path: Path | str,
    test_path: Path | str | None = None,
    *,
    validation_path: Path | str | None = None,
    val_fraction: float = 0.1,
    max_val_rows: int = 500,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "",
    text_column: str = "text",
    label_column: str = "label",
) -> Dataset:
    """Train, validation and test from files; a missing test or validation file is carved from
    train (test first, then validation from the rest). Every check runs before any training."""
    columns = {"text_column": text_column, "label_column": label_column}
    train = read_split(train_path, **columns)
    check_splits(train, train_path=train_path)  # before carving from it
    if test_path:
        test = read_split(test_path, **columns)
    else:
        train, test = carve_part(train, "test", test_fraction, None, seed, train_path)
    if validation_path:
        validation = read_split(validation_path, **columns)
    else:
        train, validation = carve_part(
            train, "validation", val_fraction, max_val_rows, seed, train_path
        )
    check_splits(
        train,
        validation,
        test,
        train_path=train_path,
        validation_path=validation_path,
        test_path=test_path,
    )
    resolved = lambda p: str(Path(p).resolve()) if p else None  # noqa: E731
    source = DataSource(
        name=name or Path(train_path).resolve().parent.name,
        train_path=str(Path(train_path).resolve()),
        test_path=resolved(test_path),
        validation_path=resolved(validation_path),
        **columns,
    )
    labels = label_order([train, validation, test])
    return Dataset(source.name, labels, train, validation, test, source)


def load_hub_dataset(
    name: str, *, text_field: str = "text", label_field: str = "label", seed: int = 0
) -> Dataset:  # pragma: no cover - needs a network
    """A Hugging Face dataset by name, for users with a network (`pip install smallcls[hub]`).
    Its splits live in the hub's cache, not in files: the source names no test or validation
    file, so a run saves the splits it used."""
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
    source = DataSource(
        name=name,
        train_path=f"hf://datasets/{name}",
        text_column=text_field,
        label_column=label_field,
        hub_dataset=name,
    )
    labels = label_order([train, validation, test])
    return Dataset(name, labels, train, validation, test, source)


def dataset_for(config: TrainConfig) -> Dataset:
    """The config's dataset: a benchmark, the user's files, or a hub dataset name. Its
    `source` names the files really read (absolute paths; None where a split was carved)."""
    if config.hub_dataset:
        columns = {"text_field": config.text_column, "label_field": config.label_column}
        dataset = load_hub_dataset(config.hub_dataset, seed=config.seed, **columns)
    else:
        paths: dict[str, Any] = {
            "train": config.train_path,
            "test": config.test_path,
            "validation": config.validation_path,
        }
        options: dict[str, Any] = {
            "text_column": config.text_column,
            "test_fraction": config.test_fraction,
            "label_column": config.label_column,
        }
        if config.dataset:  # benchmark files: standard columns, shipped test splits
            paths, options = benchmark_paths(config.dataset, config.datasets_dir), {}
        dataset = load_dataset(
            paths["train"],
            paths["test"],
            validation_path=paths["validation"],
            val_fraction=config.val_fraction,
            max_val_rows=config.max_val_rows,
            seed=config.seed,
            name=config.dataset or "",
            **options,
        )
    if not config.test_rows:
        return dataset
    # CPU budgets only: validation and test both capped, and the source records it.
    source = dataset.source and dataclasses.replace(dataset.source, test_rows=config.test_rows)
    return dataclasses.replace(
        dataset,
        validation=dataset.validation.subsample(config.test_rows, config.seed),
        test=dataset.test.subsample(config.test_rows, config.seed),
        source=source,
    )
