"""The eight benchmark datasets of `../shared/datasets`: what each folder holds and what is
known about it (task type, out-of-scope label, truncation for long inputs, the published
reference results quoted by that folder's README), and where their files are. `core.data`
reads the files and re-exports these names.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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


def _error(message: str) -> ValueError:
    # core.data imports this module, so its error class is imported only when needed.
    from core.data import DatasetError

    return DatasetError(message)


def default_datasets_dir() -> Path:
    """`../shared/datasets` next to the repository, unless SMALLCLS_DATASETS says otherwise."""
    env = os.environ.get("SMALLCLS_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise _error(f"unknown dataset {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_paths(name: str, root: Path | str | None = None) -> dict[str, Path | None]:
    """{"train", "test", "validation"} file paths of a benchmark dataset (validation may be
    None: then it is carved from train)."""
    info = benchmark(name)
    folder = (Path(root) if root else default_datasets_dir()) / info.name
    if not folder.is_dir():
        raise _error(f"dataset folder {folder} not found; set datasets_dir or SMALLCLS_DATASETS")
    return {
        "train": folder / info.train,
        "test": folder / info.test,
        "validation": folder / info.validation if info.validation else None,
    }
