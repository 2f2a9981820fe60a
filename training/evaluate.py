"""A trained model evaluated under the run's contract, and the run record written from it.

Logits come from the ids `core.preprocessing.TextEncoder` makes (the server's code path) and
become answers through `core.decision.DecisionRule` (the server's rule): the metrics a run
reports are those of the answers its exported model gives.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import TrainConfig
from core.data import Dataset, DataSource, Split, benchmark, write_split
from core.decision import DecisionRule, Decisions, sigmoid, softmax
from core.metrics import decision_metrics
from core.preprocessing import TextEncoder
from core.run_record import RunRecord, write_predictions
from training import distributed
from training.families import Classifier
from training.run_dir import environment, save_model_dir, write_json
from training.thresholds import tune_label_thresholds, tune_rejection_threshold

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    model: Classifier, encoder: TextEncoder, texts: list[str], *, batch_size: int
) -> np.ndarray:
    """(N, L) logits in input order, from the ids the run's `TextEncoder` makes (the server's
    code path); batches are length-sorted so padding stays small."""
    model.eval()
    device = next(model.parameters()).device
    ids = encoder.encode(texts).ids
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.spec.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feeds = encoder.pad([ids[i] for i in idx])
        logits = model(
            input_ids=torch.from_numpy(feeds["input_ids"]).to(device),
            attention_mask=torch.from_numpy(feeds["attention_mask"]).to(device),
        )["logits"]
        out[idx] = logits.float().cpu().numpy()
    return out


def tune_decision(dataset: Dataset, val_logits: np.ndarray, config: TrainConfig) -> DecisionRule:
    """The run's decision rule: per-label thresholds (multi-label) or the out-of-scope
    rejection threshold, both tuned on validation; plain argmax otherwise."""
    labels = list(dataset.label_names)
    if dataset.problem_type == "multi_label":
        thresholds = tune_label_thresholds(
            sigmoid(val_logits), dataset.label_matrix(dataset.validation)
        )
        return DecisionRule(labels=labels, problem_type="multi_label", thresholds=thresholds)
    oos = config.oos_label or (benchmark(config.dataset).oos_label if config.dataset else None)
    if oos and oos in labels:
        y_val = np.asarray(dataset.label_ids(dataset.validation))
        t = tune_rejection_threshold(softmax(val_logits), y_val, labels.index(oos))
        return DecisionRule(labels=labels, oos_label=oos, rejection_threshold=t)
    return DecisionRule(labels=labels)


def gold(dataset: Dataset, part: Split) -> np.ndarray:
    """(N,) label ids, or (N, L) 0/1 for multi-label."""
    if part.multi_label:
        return dataset.label_matrix(part)
    return np.asarray(dataset.label_ids(part))


def evaluate(
    model: Classifier,
    encoder: TextEncoder,
    rule: DecisionRule,
    dataset: Dataset,
    split: str,
    config: TrainConfig,
) -> tuple[dict[str, Any], Decisions]:
    """Metrics of one split under the run's decision rule, and the decisions themselves."""
    part = getattr(dataset, split)
    start = time.perf_counter()
    logits = predict_logits(model, encoder, part.texts, batch_size=config.eval_batch_size)
    decisions = rule.decide(logits)
    metrics = decision_metrics(rule, decisions, gold(dataset, part))
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "%s %s: %s (%d rows)",
        config.name,
        split,
        ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("accuracy", "micro_f1", "macro_f1") if k in metrics
        ),
        metrics["rows"],
    )
    return metrics, decisions


def _data_source(dataset: Dataset, config: TrainConfig, run_dir: Path) -> DataSource:
    """Where the run's splits are, as files. When the test split was carved from the training
    file, all three splits are saved into the run (`data/*.jsonl`, standard columns), so export,
    load tests and reports read the very rows that were trained on and evaluated."""
    source = dataset.source or DataSource(
        name=dataset.name, train_path="", hub_dataset=config.hub_dataset
    )
    if source.test_path is not None:  # a carved validation split is not needed downstream
        return source
    final_dir = run_dir.with_name(run_dir.name.removesuffix(".partial")).resolve()
    (run_dir / "data").mkdir(exist_ok=True)
    paths = {}
    for split in ("train", "validation", "test"):
        write_split(run_dir / "data" / f"{split}.jsonl", getattr(dataset, split))
        paths[f"{split}_path"] = str(final_dir / "data" / f"{split}.jsonl")
    return dataclasses.replace(source, text_column="text", label_column="label", **paths)


def evaluate_and_save(
    config: TrainConfig,
    run_dir: Path,
    model: Classifier,
    tokenizer,
    encoder: TextEncoder,
    dataset: Dataset,
    budget: dict[str, Any],
    device: str,
) -> None:
    """Tune the decision rule on validation, evaluate test under it, and write the run: its
    metrics, its contract (`contract.json`) and its answer for every test row."""
    val_logits = predict_logits(
        model, encoder, dataset.validation.texts, batch_size=config.eval_batch_size
    )
    rule = tune_decision(dataset, val_logits, config)
    if config.test_rows:
        budget["subsampled"] = f"validation and test capped at {config.test_rows} rows"
    test_metrics, test_decisions = evaluate(model, encoder, rule, dataset, "test", config)
    metrics = {
        "train": budget,
        "validation": decision_metrics(
            rule, rule.decide(val_logits), gold(dataset, dataset.validation)
        ),
        "test": test_metrics,
    }
    write_json(run_dir / "metrics.json", metrics)
    world_size = distributed.current().world_size  # the processes that trained it
    write_json(
        run_dir / "environment.json", {**environment(), "device": device, "world_size": world_size}
    )
    write_predictions(run_dir, rule.answers(test_decisions))
    RunRecord(
        name=config.name,
        family=config.family,
        head=config.head,
        base_model=config.base_model,
        task=dataset.problem_type,  # type: ignore[arg-type]
        labels=list(dataset.label_names),
        preprocessing=encoder.preprocessing,
        decision=rule,
        dataset=_data_source(dataset, config, run_dir),
    ).write(run_dir)
    model.to("cpu")
    save_model_dir(
        run_dir / "model", model, tokenizer, dataset.label_names, base_model=config.base_model
    )
