"""`smallcls compare`: the whole pipeline on the user's own data, one command.

The data is read once (CSV, TSV or JSON Lines, any column names), checked before anything
trains, and written as JSON Lines splits into `<out>/data/<name>/` (a test split carved from train,
seeded and stratified, when none is given). Every family then trains, exports, serves and is
load-tested on exactly those files, so they are compared on the same test rows, and every
manifest, load test and report row names them. The family presets come from the demo config
(configs/demo.yaml): the same recipes `make demo` runs on SST-2.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.config import DemoConfig, TrainConfig, load_config
from core.data import (
    Split,
    carve_part,
    check_splits,
    read_split,
    write_split,
)

DATA_DIR = "data"
SOURCE_NAME = "SOURCE.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareInputs:
    train: Path
    test: Path | None = None  # None: carved from train
    validation: Path | None = None  # None: each run carves it from train (same seed)
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.2
    seed: int = 0
    name: str | None = None  # the dataset's name in every record; None: from the file

    @property
    def dataset_name(self) -> str:
        """`--name`, else the folder of a file named train.* (data/sst2/train.jsonl: sst2),
        else the file's stem (reviews.csv: reviews)."""
        if self.name:
            return self.name
        path = Path(self.train)
        stem = path.name.split(".")[0]
        return path.resolve().parent.name if stem == "train" else stem


def prepare_data(inputs: CompareInputs, out_dir: Path) -> dict[str, Path | None]:
    """Read, check and write the splits as `<out>/data/<name>/{train,test,validation}.jsonl`;
    returns their paths (validation None when not given)."""
    columns = {"text_column": inputs.text_column, "label_column": inputs.label_column}
    train = read_split(inputs.train, **columns)
    test: Split | None = read_split(inputs.test, **columns) if inputs.test else None
    validation = read_split(inputs.validation, **columns) if inputs.validation else None
    check_splits(train, train_path=inputs.train)  # before carving from it
    if test is None:
        train, test = carve_part(
            train, "test", inputs.test_fraction, None, inputs.seed, inputs.train
        )
    check_splits(
        train,
        validation,
        test,
        train_path=inputs.train,
        validation_path=inputs.validation,
        test_path=inputs.test,
    )
    # <out>/data/<name>/: the folder's name is the dataset's name in runs and reports.
    folder = out_dir / DATA_DIR / inputs.dataset_name
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {
        "train": write_split(folder / "train.jsonl", train),
        "test": write_split(folder / "test.jsonl", test),
        "validation": write_split(folder / "validation.jsonl", validation) if validation else None,
    }
    source = {
        "train": str(Path(inputs.train).resolve()),
        "test": str(Path(inputs.test).resolve()) if inputs.test else None,
        "test_carved": f"{inputs.test_fraction:g} of train, seed {inputs.seed}, stratified"
        if inputs.test is None
        else None,
        "validation": str(Path(inputs.validation).resolve()) if inputs.validation else None,
        **columns,
        "rows": {"train": len(train), "test": len(test), "validation": len(validation or [])},
    }
    (folder / SOURCE_NAME).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return paths


def select_models(
    models: Sequence[TrainConfig], families: Sequence[str] | None
) -> list[TrainConfig]:
    """The presets named by family (encoder, extracted_encoder, causal_lm) or by model name."""
    if not families:
        return list(models)
    known = {m.family for m in models} | {m.name for m in models}
    if unknown := sorted(set(families) - known):
        raise ValueError(f"unknown families {unknown}; choose from {sorted(known)}")
    return [m for m in models if m.family in families or m.name in families]


def compare_config(
    inputs: CompareInputs,
    out_dir: Path,
    *,
    preset: Path,
    families: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoConfig:
    """The pipeline's config: the preset's stages and families, on the prepared files (which
    this writes); `smallcls.demo.run_demo` runs it."""
    demo = load_config(DemoConfig, preset, {**(overrides or {}), "output_dir": str(out_dir)})
    paths = prepare_data(inputs, out_dir)
    echo(
        f"[data] {paths['train']} and {paths['test']}"
        + (f", validation {paths['validation']}" if paths["validation"] else "")
    )
    data = {
        "train_path": str(paths["train"]),
        "test_path": str(paths["test"]),
        "validation_path": str(paths["validation"]) if paths["validation"] else None,
        "dataset": None,
        "text_column": "text",
        "label_column": "label",
        "seed": inputs.seed,
    }
    models = [
        dataclasses.replace(m, **data, **(model_overrides or {}))
        for m in select_models(demo.models, families)
    ]
    kept = {m.name for m in models}
    precisions = {k: v for k, v in demo.model_precisions.items() if k in kept}
    return dataclasses.replace(demo, models=models, model_precisions=precisions)
