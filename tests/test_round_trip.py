"""What was evaluated is what is served: for every task type, a tiny model is trained, exported
and served in process, and the API's answers on the test rows are the run's own evaluated
predictions, row by row, and give the run's own test metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import httpx

from core.config import TrainConfig
from core.data import dataset_for
from core.metrics import decision_metrics, decisions_from_answers
from core.run_record import RunRecord, read_predictions
from export.onnx_export import export_run
from service.launch import ServerProcess
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice
from training.evaluate import gold
from training.train import train

# A real `bentoml serve` on 127.0.0.1: the served path is the production one (and a second
# in-process app would clash with test_service.py's in BentoML's metrics registry).
pytestmark = [pytest.mark.slow, pytest.mark.integration]

BATCH = 32  # texts per request, under the service's limit


def _configs(tiny_dirs: dict[str, Path], data: Path) -> dict[str, TrainConfig]:
    """One tiny run per task type. Benchmarks are cut to a few hundred rows."""
    base = dict(
        family="encoder",
        base_model=str(tiny_dirs["bert"]),
        learning_rate=3e-3,
        threads=1,
        max_length=32,
        batch_size=16,
        epochs=1,
        eval_batch_size=32,
        max_val_rows=48,
    )
    sst2 = dict(
        train_path=str(sst2_slice(SST2_TRAIN, data / "train.jsonl", 240)),
        test_path=str(sst2_slice(SST2_TEST, data / "test.jsonl", 64)),
    )
    return {
        "single": TrainConfig(name="single", **base, **sst2),
        "multi": TrainConfig(
            name="multi", **base, dataset="goemotions", train_rows=300, test_rows=64
        ),
        "oos": TrainConfig(name="oos", **base, dataset="clinc150", train_rows=300, test_rows=64),
        # max_length 12: most SST-2 test sentences are cut, so head+tail really applies.
        "head-tail": TrainConfig(
            name="head-tail", **{**base, "max_length": 12}, truncation="head_tail", **sst2
        ),
        "label-words": TrainConfig(
            name="label-words",
            **{
                **base,
                "base_model": str(tiny_dirs["llama"]),
                "family": "causal_lm",
                "head": "label_words",
            },
            prompt_template="Review: {text}\nSentiment:",
            label_words={"negative": " bad", "positive": " good"},
            **sst2,
        ),
    }


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory) -> dict[str, tuple[TrainConfig, Path, Path]]:
    """task -> (config, run dir, exported fp32 model dir)."""
    root = tmp_path_factory.mktemp("round_trip")
    (root / "data").mkdir()
    out = {}
    for task, config in _configs(tiny_dirs, root / "data").items():
        run_dir = train(config, root / "runs", show_progress=False)
        (model_dir,) = export_run(run_dir, root / "models", variants=("fp32",), parity_rows=16)
        out[task] = (config, run_dir, model_dir)
    return out


@pytest.fixture(scope="module")
def client(runs) -> Iterator[httpx.Client]:
    with (
        ServerProcess([m for _, _, m in runs.values()], threads=1) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield http


def _served(client: httpx.Client, model: str, texts: list[str]) -> list[dict[str, Any]]:
    answers = []
    for start in range(0, len(texts), BATCH):
        resp = client.post(
            "/classify", json={"texts": texts[start : start + BATCH], "model": model}
        )
        assert resp.status_code == 200, resp.text
        answers += resp.json()["predictions"]
    return answers


def _same_metrics(served: Any, evaluated: Any, where: str = "metrics") -> None:
    if isinstance(evaluated, dict):
        assert set(served) >= set(evaluated) - {"seconds"}, where
        for key, value in evaluated.items():
            if key != "seconds":
                _same_metrics(served[key], value, f"{where}.{key}")
    elif isinstance(evaluated, float):
        assert served == pytest.approx(evaluated, abs=1e-9), where
    else:
        assert served == evaluated, where


@pytest.mark.parametrize("task", ["single", "multi", "oos", "head-tail", "label-words"])
def test_served_answers_are_the_runs_evaluated_answers(runs, client, task):
    config, run_dir, model_dir = runs[task]
    record = RunRecord.read(run_dir)
    dataset = dataset_for(config)
    evaluated = read_predictions(run_dir)
    served = _served(client, model_dir.name, dataset.test.texts)
    assert len(served) == len(evaluated) == len(dataset.test)
    for row, (got, want) in enumerate(zip(served, evaluated, strict=True)):
        assert (got["label"], got["labels"], got["rejected"]) == (
            want["label"],
            want["labels"],
            want["rejected"],
        ), f"{task} test row {row}: served {got}, evaluated {want}"
    # The metrics of the served answers are the run's test metrics, to the last digit.
    run_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    served_metrics = decision_metrics(
        record.decision,
        decisions_from_answers(record.decision, served),
        gold(dataset, dataset.test),
    )
    _same_metrics(served_metrics, run_metrics)


def test_each_task_type_keeps_its_own_contract(runs):
    rules = {task: RunRecord.read(run).decision for task, (_, run, _) in runs.items()}
    assert rules["multi"].multi_label and rules["multi"].thresholds is not None
    assert rules["oos"].oos_label == "oos" and rules["oos"].rejection_threshold is not None
    assert not rules["single"].rejects and not rules["single"].multi_label
    pre = {task: RunRecord.read(run).preprocessing for task, (_, run, _) in runs.items()}
    assert pre["head-tail"].truncation == "head_tail"
    assert pre["label-words"].truncation == "tail"  # the question after the text survives
    assert pre["label-words"].prompt_template == "Review: {text}\nSentiment:"


def test_head_tail_really_cut_the_served_texts(runs, client):
    config, _, model_dir = runs["head-tail"]
    texts = dataset_for(config).test.texts
    served = _served(client, model_dir.name, texts)
    # Enough rows were cut that the row-by-row equality above covered head+tail.
    assert sum(p["truncated"] for p in served) >= len(texts) // 4
