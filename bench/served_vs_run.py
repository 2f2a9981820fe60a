"""The run's test metrics beside the same metrics computed from the served API's answers.

For each exported model directory: start `bentoml serve` on 127.0.0.1, send every text of the
test file its manifest names through `POST /classify`, score the answers with the run's own
decision rule and gold labels (`core.metrics.decision_metrics`), and print both side by side,
with the share of rows whose served answer equals the run's saved answer. Writes
`served_vs_run.json` next to the table.

    python bench/served_vs_run.py models/clinc-fp32 models/goemotions-fp32 --out bench_out/svr
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.config import TrainConfig, from_mapping
from core.data import dataset_for
from core.manifest import Manifest
from core.metrics import decision_metrics, decisions_from_answers
from core.run_record import RunRecord, read_predictions
from service.launch import ServerProcess
from training.evaluate import gold

BATCH = 64  # texts per request (the service's default limit)
# What the table shows, where the task has it.
HEADLINE = (
    "accuracy",
    "macro_f1",
    "micro_f1",
    "exact_match",
    "oos.in_scope_accuracy",
    "oos.oos_recall",
    "oos.oos_precision",
)


def _get(metrics: dict[str, Any], key: str) -> float | None:
    for part in key.split("."):
        if not isinstance(metrics, dict) or part not in metrics:
            return None
        metrics = metrics[part]
    return metrics  # type: ignore[return-value]


def served_answers(url: str, model: str, texts: list[str]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(texts), BATCH):
            body = {"texts": texts[start : start + BATCH], "model": model}
            resp = client.post("/classify", json=body)
            resp.raise_for_status()
            answers += resp.json()["predictions"]
    return answers


def compare_one(url: str, model_dir: Path) -> dict[str, Any]:
    manifest = Manifest.read(model_dir)
    run_dir = Path(manifest.source_run)
    record = RunRecord.read(run_dir)
    config = from_mapping(TrainConfig, json.loads((run_dir / "config.json").read_text()))
    dataset = dataset_for(config)  # the run's own test split (subsampled as it was)
    start = time.perf_counter()
    answers = served_answers(url, manifest.name, dataset.test.texts)
    seconds = time.perf_counter() - start
    served = decision_metrics(
        record.decision,
        decisions_from_answers(record.decision, answers),
        gold(dataset, dataset.test),
    )
    run = json.loads((run_dir / "metrics.json").read_text())["test"]
    saved = read_predictions(run_dir)
    same = sum(a["labels"] == b["labels"] for a, b in zip(answers, saved, strict=True))
    return {
        "model": manifest.name,
        "dataset": manifest.dataset.get("name"),
        "test_path": str(manifest.test_path),
        "rows": len(answers),
        "served_seconds": round(seconds, 1),
        "rows_equal_to_run": same,
        "decision": record.decision.to_dict() | {"labels": len(record.labels)},
        "run": {k: _get(run, k) for k in HEADLINE if _get(run, k) is not None},
        "served": {k: _get(served, k) for k in HEADLINE if _get(served, k) is not None},
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | dataset | test rows | metric | run | served API | rows equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for key, value in r["run"].items():
            lines.append(
                f"| {r['model']} | {r['dataset']} | {r['rows']} | {key} | {value:.4f} | "
                f"{r['served'][key]:.4f} | {r['rows_equal_to_run']}/{r['rows']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench_out/served_vs_run"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ServerProcess(
        args.model_dirs, threads=args.threads, log_path=args.out / "server.log"
    ) as s:
        results = [compare_one(s.url, Path(d)) for d in args.model_dirs]
    (args.out / "served_vs_run.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
