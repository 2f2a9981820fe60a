"""Per-class F1 and the confusion matrix of one model, from wherever they were recorded.

In order: the manifest's metrics (the exported file, scored through the serving code: what is
served), the run's `metrics.json` (the trained model), and last the run's own answers
(`test_predictions.jsonl`) against the test labels its contract names, for runs whose metrics
lack the matrix. Multi-label models have no confusion matrix; their per-label F1 still shows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_NAME, Manifest
from core.run_record import PREDICTIONS_NAME, RUN_RECORD_NAME
from reports.rows import RUN_METRICS


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassScores:
    labels: list[str]
    f1: dict[str, float | None]
    support: dict[str, int | None]
    confusion: list[list[int]] | None  # rows: true label, columns: predicted, in labels' order
    source: str  # the file these were read from (or computed from)

    def top_confusions(self, n: int = 5) -> list[tuple[str, str, int]]:
        """The n largest off-diagonal cells: (true label, predicted label, count)."""
        if self.confusion is None:
            return []
        cells = [
            (self.labels[i], self.labels[j], count)
            for i, row in enumerate(self.confusion)
            for j, count in enumerate(row)
            if i != j and count > 0
        ]
        return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:n]


def class_scores(manifest: Manifest, model_dir: Path, run_dir: Path | None) -> ClassScores | None:
    from_manifest = _from_metrics(manifest.metrics, manifest.labels, str(model_dir / MANIFEST_NAME))
    if from_manifest is not None and from_manifest.confusion is not None:
        return from_manifest
    run_metrics = None if run_dir is None else run_dir / RUN_METRICS
    if run_metrics is not None and run_metrics.is_file():
        test = json.loads(run_metrics.read_text(encoding="utf-8")).get("test", {})
        found = _from_metrics(test, manifest.labels, str(run_metrics))
        if found is not None and found.confusion is not None:
            return found
    computed = None if run_dir is None else from_predictions(run_dir)
    if computed is not None:
        return computed
    return from_manifest  # per-class F1 without a matrix (multi-label), or nothing


def _from_metrics(metrics: dict[str, Any], labels: list[str], source: str) -> ClassScores | None:
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict):
        return None
    names = metrics.get("labels") if isinstance(metrics.get("labels"), list) else labels
    names = [str(n) for n in names]
    matrix = metrics.get("confusion_matrix")
    valid = (
        isinstance(matrix, list)
        and len(matrix) == len(names)
        and all(isinstance(r, list) and len(r) == len(names) for r in matrix)
    )
    return ClassScores(
        labels=names,
        f1={n: _get(per_class.get(n), "f1-score") for n in names},
        support={n: _count(_get(per_class.get(n), "support")) for n in names},
        confusion=[[int(c) for c in r] for r in matrix] if valid else None,
        source=source,
    )


def from_predictions(run_dir: Path) -> ClassScores | None:
    """The confusion matrix and per-class F1 of the run's own test answers, against the test
    labels of the file its contract names (subsampled as the run did, when it did)."""
    from core.data import read_split  # the data reader only when a matrix must be computed

    predictions, contract = run_dir / PREDICTIONS_NAME, run_dir / RUN_RECORD_NAME
    if not predictions.is_file() or not contract.is_file():
        return None
    record = json.loads(contract.read_text(encoding="utf-8"))
    source, labels = record.get("dataset", {}), [str(x) for x in record.get("labels", [])]
    if record.get("task") != "single_label" or not source.get("test_path") or not labels:
        return None
    columns = {k: source[k] for k in ("text_column", "label_column") if source.get(k)}
    test = read_split(source["test_path"], **columns)
    if source.get("test_rows"):
        config = run_dir / "config.json"
        seed = json.loads(config.read_text()).get("seed", 0) if config.is_file() else 0
        test = test.subsample(source["test_rows"], seed)
    answers = [
        json.loads(line)["label"]
        for line in predictions.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if len(answers) != len(test.labels):
        return None  # not the same rows: no matrix rather than a wrong one
    index = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for truth, answer in zip(test.labels, answers, strict=True):
        if truth in index and answer in index:
            matrix[index[truth]][index[answer]] += 1
    return ClassScores(
        labels=labels,
        f1={name: _f1(matrix, i) for name, i in index.items()},
        support={name: sum(matrix[i]) for name, i in index.items()},
        confusion=matrix,
        source=f"{predictions} against {source['test_path']}",
    )


def _f1(matrix: list[list[int]], i: int) -> float | None:
    tp = matrix[i][i]
    predicted = sum(row[i] for row in matrix)
    actual = sum(matrix[i])
    if predicted + actual == 0:
        return None
    return 2 * tp / (predicted + actual)


def _get(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, dict) else None


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
