"""Constructed pipeline outputs of several datasets for the answer-page tests: model dirs
(manifests with per-class metrics), sweep dirs whose steps name their texts file, and run dirs.

Two datasets reuse the same model names (as `smallcls compare` does on every dataset), so the
join must tell them apart by the texts file each load test read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from core.decision import DecisionRule
from core.manifest import Manifest
from core.preprocessing import Preprocessing
from loadtests.run import LoadSummary
from loadtests.sweep import SweepSummary

SST2 = ["negative", "positive"]
TREC = ["ABBR", "DESC", "NUM"]
Steps = list[tuple[int, float, float]]  # (users, texts/s, p95 ms)


def write_test_file(out: Path, dataset: str, rows: list[tuple[str, str]]) -> Path:
    path = out / "data" / dataset / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def model_dir(
    out: Path,
    name: str,
    *,
    dataset: str,
    test_path: Path,
    labels: list[str],
    family: str = "encoder",
    precision: str = "fp32",
    accuracy: float = 0.9,
    macro_f1: float | None = None,
    confusion: list[list[int]] | None = None,
    run_dir: Path | None = None,
    per_class: bool = True,
    gate: dict | None = None,
    folder: str | None = None,
) -> Path:
    folder_path = out / "models" / (folder or name)
    folder_path.mkdir(parents=True)
    metrics: dict = {"accuracy": accuracy, "macro_f1": macro_f1 or accuracy, "rows": 10}
    if per_class:
        metrics["per_class"] = {
            label: {"f1-score": accuracy, "support": 5.0, "precision": 1.0, "recall": 1.0}
            for label in labels
        }
        metrics["labels"] = labels
    if confusion is not None:
        metrics["confusion_matrix"] = confusion
    Manifest(
        name=name,
        family=family,  # type: ignore[arg-type]
        head="mean_pool",
        base_model=f"org/{name}",
        labels=labels,
        precision=precision,  # type: ignore[arg-type]
        preprocessing=Preprocessing(max_length=64),
        decision=DecisionRule(labels=labels),
        dataset={"name": dataset, "test_path": str(test_path), "text_column": "text"},
        source_run=str(run_dir) if run_dir else "",
        parameters=10_000_000,
        metrics=metrics,
        parity={"label_agreement_vs_fp32": 0.99} if precision != "fp32" else {},
        gate=gate or {},
    ).write(folder_path)
    size = 1_000_000 if precision == "int8" else 4_000_000
    (folder_path / "model.onnx").write_bytes(b"\0" * size)
    return folder_path


def sweep_dir(out: Path, model: str, texts: Path, steps: Steps, slo: float = 50.0) -> Path:
    folder = out / "loadtests" / model
    folder.mkdir(parents=True)
    step_dicts = []
    for users, tps, p95 in steps:
        summary = LoadSummary(
            model=model,
            users=users,
            run_time_s=5,
            batch=1,
            requests=500,
            failures=0,
            failure_rate=0.0,
            rps=tps,
            texts_per_s=tps,
            p50_ms=p95 / 2,
            p95_ms=p95,
            p99_ms=p95 * 1.2,
            mean_ms=p95 / 2,
            texts_source=str(texts),
        )
        step = folder / f"users-{users:03d}"
        step.mkdir()
        summary.write(step)
        step_dicts.append({**dataclasses.asdict(summary), "dir": step.name})
    met = [d for d in step_dicts if d["p95_ms"] <= slo]
    SweepSummary(
        model=model, slo_p95_ms=slo, max_failure_rate=0.01, batch=1, length="all",
        step_seconds=5, workers=0, machine="2-core Test CPU", cpu_count=2,
        stop_reason="test", steps=step_dicts,
        at_slo=max(met, key=lambda d: d["texts_per_s"]) if met else None,
    ).write(folder)  # fmt: skip
    return folder


def run_dir(out: Path, name: str, test_path: Path, labels: list[str], answers: list[str]) -> Path:
    """A run whose metrics.json has no confusion matrix, only its answers per test row."""
    folder = out / "runs" / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps({"train": {"seconds": 12.0, "rows": 200}, "test": {"rows": len(answers)}})
    )
    (folder / "config.json").write_text(json.dumps({"seed": 0}))
    (folder / "contract.json").write_text(
        json.dumps(
            {
                "task": "single_label",
                "labels": labels,
                "dataset": {
                    "name": "x",
                    "train_path": "t",
                    "test_path": str(test_path),
                    "text_column": "text",
                    "label_column": "label",
                    "test_rows": None,
                },
            }
        )
    )
    (folder / "test_predictions.jsonl").write_text(
        "".join(json.dumps({"label": a}) + "\n" for a in answers)
    )
    return folder


def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    """Two pipeline output dirs, sst2 and trec, with the same three model names each."""
    a, b = tmp_path / "sst2_out", tmp_path / "trec_out"
    sst2 = write_test_file(a, "sst2", [("good", "positive"), ("bad", "negative")])
    model_dir(
        a,
        "minilm-fp32",
        dataset="sst2",
        test_path=sst2,
        labels=SST2,
        accuracy=0.90,
        confusion=[[9, 1], [1, 9]],
    )
    model_dir(
        a,
        "minilm-int8",
        dataset="sst2",
        test_path=sst2,
        labels=SST2,
        accuracy=0.895,
        precision="int8",
        confusion=[[9, 1], [2, 8]],
    )
    model_dir(
        a,
        "smollm2-last-fp32",
        dataset="sst2",
        test_path=sst2,
        labels=SST2,
        family="causal_lm",
        accuracy=0.93,
        confusion=[[10, 0], [1, 9]],
    )
    model_dir(
        a,
        "smollm2-last-int8",
        dataset="sst2",
        test_path=sst2,
        labels=SST2,
        family="causal_lm",
        precision="int8",
        accuracy=0.9,
        folder="refused/smollm2-last-int8",
        gate={"passed": False, "reasons": ["agrees with fp32 on 97.00% of test rows"]},
    )
    sweep_dir(a, "minilm-fp32", sst2, [(1, 100.0, 10.0), (4, 300.0, 40.0), (8, 400.0, 90.0)])
    sweep_dir(a, "minilm-int8", sst2, [(1, 150.0, 8.0), (4, 450.0, 30.0), (8, 500.0, 120.0)])
    sweep_dir(a, "smollm2-last-fp32", sst2, [(1, 30.0, 60.0), (4, 60.0, 150.0)])

    rows = [("q1", "ABBR"), ("q2", "DESC"), ("q3", "DESC"), ("q4", "NUM")]
    trec = write_test_file(b, "trec", rows)
    # This run recorded no confusion matrix: it is computed from its answers per test row.
    lm_run = run_dir(b, "smollm2-last", trec, TREC, ["ABBR", "NUM", "DESC", "NUM"])
    model_dir(
        b,
        "minilm-fp32",
        dataset="trec",
        test_path=trec,
        labels=TREC,
        accuracy=0.96,
        confusion=[[1, 0, 0], [0, 2, 0], [0, 0, 1]],
    )
    model_dir(
        b,
        "minilm-int8",
        dataset="trec",
        test_path=trec,
        labels=TREC,
        accuracy=0.955,
        precision="int8",
        confusion=[[1, 0, 0], [0, 2, 0], [0, 0, 1]],
    )
    model_dir(
        b,
        "smollm2-last-fp32",
        dataset="trec",
        test_path=trec,
        labels=TREC,
        family="causal_lm",
        accuracy=0.962,
        run_dir=lm_run,
        per_class=False,
    )
    sweep_dir(b, "minilm-fp32", trec, [(1, 200.0, 10.0), (4, 500.0, 30.0)])
    sweep_dir(b, "minilm-int8", trec, [(1, 250.0, 8.0), (4, 600.0, 25.0)])
    sweep_dir(b, "smollm2-last-fp32", trec, [(1, 40.0, 30.0), (4, 80.0, 70.0)])
    return a, b  # fmt: skip


TaskScores = dict[str, float]  # task -> accuracy


def multitask_record(
    out: Path,
    *,
    multi: TaskScores,
    encoders: TaskScores,
    multi_rates: tuple[float, ...] = (26.9, 27.4, 28.7),
    encoder_rates: tuple[float, ...] = (224.9, 230.3, 219.7),
    multi_rss: tuple[float, ...] = (848.0, 879.0, 1121.0),
    encoder_rss: tuple[float, ...] = (593.0, 599.0, 605.0),
) -> Path:
    """A `multitask_measure.json` as `bench/multitask_serving.py measure` writes it: one
    multi-task model against one encoder per task, three rounds each."""
    from core.multitask_measure import (
        MultitaskMeasure,
        ServedModel,
        SetupResult,
        StreamRound,
        TaskAccuracy,
    )
    from reports.cost import DEFAULT_PRICES, load_prices, usd_per_million

    instance = load_prices(DEFAULT_PRICES).measured
    models = out / "mt" / "models"

    def setup(name: str, dirs: dict[str, str], scores: TaskScores, rates, rss) -> SetupResult:
        served = [
            ServedModel(name=m, model_dir=str(models / m),
                        manifest=str(models / m / "manifest.json"),
                        model_onnx_bytes=539_600_000 if "multitask" in m else 90_400_000)
            for m in dict.fromkeys(dirs.values())
        ]  # fmt: skip
        accuracy = [
            TaskAccuracy(task=t, model=dirs[t], accuracy=a, answers_equal_to_run=1.0,
                         test_rows=500, source=str(models / dirs[t] / "manifest.json"))
            for t, a in scores.items()
        ]  # fmt: skip
        rounds = [
            StreamRound(texts_per_s=r, p50_ms=1000 * 4 / r, p95_ms=1500 * 4 / r, rss_mb=m,
                        requests=int(12 * r), errors=0)
            for r, m in zip(rates, rss, strict=True)
        ]  # fmt: skip
        return SetupResult.from_rounds(
            name=name, models=served, accuracy=accuracy, rounds=rounds,
            price=lambda rate: usd_per_million(instance.usd_per_hour, rate),
        )  # fmt: skip

    tasks = list(multi)
    record = MultitaskMeasure(
        tasks=tasks,
        multitask=setup(f"one multitask-smollm2-fp32 for {len(tasks)} tasks",
                        dict.fromkeys(tasks, "multitask-smollm2-fp32"), multi, multi_rates,
                        multi_rss),
        per_task_encoders=setup(f"{len(tasks)} x minilm-fp32",
                                {t: f"minilm-{t}-fp32" for t in tasks}, encoders, encoder_rates,
                                encoder_rss),
        instance=instance.name,
        usd_per_hour=instance.usd_per_hour,
        price_table=str(DEFAULT_PRICES),
        users=4,
        seconds_per_round=12.0,
        warmup_seconds=3.0,
        rounds=3,
        command="python -m bench.multitask_serving measure --out /tmp/mt --tasks sst2,trec",
        date="2026-12-01T18:00:00+00:00",
    )  # fmt: skip
    (out / "mt").mkdir(parents=True, exist_ok=True)
    return record.write(out / "mt")
