"""Export a multi-task run as ONE model directory that serves every task it was trained on.

The graph is the run's causal LM with its label-word rows, traced once (export/onnx_export.py's
`export_onnx`): texts in, the logits of every task's words out. The manifest lists the tasks
(core/manifest.py's TaskRule: prompt, label words, logit columns, decision rule), copied
unchanged from the run; the service puts each request's texts in its task's prompt and reads
the task's columns after the forward pass, so requests of different tasks share a batch.

Each variant is scored through the serving runtime on every task's test split and gated per
task against its parent (fp32 against torch on the first test rows, int8 against fp32 on all),
with the same `export.gate.check` as a single-task model: a variant passes only if every task
passes. Its manifest records accuracy, parity and agreement with the run's own answers per
task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import registry
from core.config import TrainConfig
from core.data import dataset_for
from core.decision import DecisionRule
from core.manifest import MANIFEST_NAME, MODEL_NAME, MULTITASK_NAME, Manifest, TaskRule, sha256_of
from core.metrics import decision_metrics
from core.preprocessing import Preprocessing, TextEncoder
from core.run_record import read_predictions
from export import gate, hf_files
from export import variants as variants_mod
from export.scoring import agreement_with_run, score
from export.variants import PRECISION, parse_variants
from training.evaluate import gold, predict_logits
from training.families import Classifier
from training.run_dir import load_run

log = logging.getLogger(__name__)

MULTITASK_VARIANTS = ("fp32", "int8")  # graph rewrites that need no per-family knowledge


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """One task's test split and what its variants are checked against."""

    rule: TaskRule
    prompts: list[str]  # the test texts in the task's prompt: what the graph reads
    y_true: np.ndarray  # (N,) label ids
    run_answers: list[dict[str, Any]]
    torch_logits: np.ndarray  # (parity_rows, L) over the task's labels


@dataclasses.dataclass(frozen=True)
class MultitaskSource:
    model: Classifier
    tokenizer: Any
    config: TrainConfig
    words: list[str]  # the graph's logit columns: every task's label words
    preprocessing: Preprocessing  # "{text}", tail truncation: prompts are filled before it
    splits: list[TaskSplit]


def is_multitask_run(run_dir: Path) -> bool:
    return (Path(run_dir) / MULTITASK_NAME).is_file()


def read_multitask_run(run_dir: Path, parity_rows: int) -> MultitaskSource:
    """The trained model, its task contracts and each task's test split, checked to be the
    run's own (same rows as its saved predictions)."""
    model, tokenizer, config, words = load_run(run_dir)
    record = json.loads((run_dir / MULTITASK_NAME).read_text(encoding="utf-8"))
    preprocessing = Preprocessing.from_dict(record["preprocessing"])
    encoder = TextEncoder(tokenizer.backend_tokenizer, preprocessing)
    splits = []
    for item in record["tasks"]:
        rule = TaskRule.from_dict(item)
        dataset = dataset_for(dataclasses.replace(config, dataset=rule.name))
        answers = read_predictions(run_dir / "tasks" / rule.name)
        if dataset.label_names != rule.labels or len(answers) != len(dataset.test):
            raise ValueError(
                f"{run_dir}: task {rule.name} now has labels {dataset.label_names} and "
                f"{len(dataset.test)} test rows, the run had {rule.labels} and {len(answers)}: "
                "the data files changed since training; train again"
            )
        prompts = rule.prompts(dataset.test.texts)
        head = predict_logits(
            model, encoder, prompts[:parity_rows], batch_size=config.eval_batch_size
        )
        splits.append(
            TaskSplit(rule, prompts, gold(dataset, dataset.test), answers, rule.select(head))
        )
    return MultitaskSource(model, tokenizer, config, words, preprocessing, splits)


def _check_tasks(
    model_dir: Path, src: MultitaskSource, parent: dict[str, np.ndarray] | None, gate_kw: dict
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, parity, gate record, logits per task) of one variant, every task scored
    through the serving runtime on its whole test split."""
    metrics: dict[str, Any] = {"tasks": {}}
    parity: dict[str, Any] = {"tasks": {}}
    verdict: dict[str, Any] = {"passed": True, "reasons": [], "tasks": {}, "checked_on": "cpu"}
    logits_by_task: dict[str, np.ndarray] = {}
    for split in src.splits:
        rule, name = split.rule, split.rule.name
        all_logits, seconds = score(model_dir, split.prompts, threads=torch.get_num_threads())
        logits = rule.select(all_logits)  # (N, L) the task's own words
        logits_by_task[name] = logits
        decided = decision_metrics(rule.decision, rule.decision.decide(logits), split.y_true)
        metrics["tasks"][name] = decided | {"seconds": seconds}
        head = logits[: len(split.torch_logits)]
        parity["tasks"][name] = {
            "rows": len(head),
            "max_abs_logit_diff_vs_torch": float(np.abs(head - split.torch_logits).max()),
            "answer_agreement_vs_run": agreement_with_run(rule.decision, logits, split.run_answers),
        }
        if parent is None:
            result = gate.check(
                head, split.torch_logits, split.y_true[: len(head)], rule=rule.decision, **gate_kw
            )
        else:
            result = gate.check(logits, parent[name], split.y_true, rule=rule.decision, **gate_kw)
            parity["tasks"][name]["label_agreement_vs_fp32"] = result.agreement
        verdict["tasks"][name] = result.as_dict()
        verdict["passed"] &= result.passed
        verdict["reasons"] += [f"{name}: {reason}" for reason in result.reasons]
        log.info("%s %s: accuracy %.4f", model_dir.name, name, decided["accuracy"])
    accuracies = [m["accuracy"] for m in metrics["tasks"].values()]
    metrics["accuracy"] = float(np.mean(accuracies))  # macro over tasks, for one-line reports
    parity["answer_agreement_vs_run"] = min(
        p["answer_agreement_vs_run"] for p in parity["tasks"].values()
    )
    return metrics, parity, verdict, logits_by_task


def _files(model_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    return (
        {n: sha256_of(model_dir / n) for n in names},
        {n: (model_dir / n).stat().st_size for n in names},
    )


def _build_variant(
    variant: str,
    partial: Path,
    src: MultitaskSource,
    run_dir: Path,
    fp32_dir: Path,
    parent: dict[str, np.ndarray] | None,
    gate_kw: dict[str, Any],
    force: bool,
) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Write one variant's graph and manifest into `partial` and check every task on it."""
    from export.onnx_export import export_onnx  # that module dispatches multi-task runs here

    start = time.perf_counter()
    hf_files.write_tokenizer_files(partial, src.tokenizer, src.preprocessing)
    built: dict[str, Any] = {}
    if variant == "fp32":
        export_onnx(src.model, src.tokenizer, partial / MODEL_NAME, src.config.max_length)
    else:
        built = variants_mod.quantize_int8_dynamic(fp32_dir / MODEL_NAME, partial / MODEL_NAME)
    files, sizes = _files(partial)
    manifest = Manifest(
        name=partial.name.removesuffix(".partial"),
        family="causal_lm",
        head="label_words",
        base_model=src.config.base_model,
        labels=src.words,
        precision=PRECISION[variant],
        variant=variant,
        preprocessing=src.preprocessing,
        decision=DecisionRule(labels=src.words),
        tasks=[s.rule for s in src.splits],
        dataset={"name": "+".join(s.rule.name for s in src.splits)},
        source_run=str(run_dir.resolve()),
        parameters=sum(p.numel() for p in src.model.parameters()),
        files=files,
        file_sizes=sizes,
        quantization=built,
    )
    manifest.write(partial)  # the serving runtime that scores it reads it
    export_seconds = round(time.perf_counter() - start, 1)
    metrics, parity, verdict, logits = _check_tasks(partial, src, parent, gate_kw)
    verdict["forced"] = force and not verdict["passed"]
    manifest = dataclasses.replace(
        manifest,
        metrics={"export_seconds": export_seconds, **metrics},
        parity=parity,
        gate=verdict,
        verified_on={"cpu": True, "gpu": False},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.write(partial)
    return manifest, logits


def export_multitask(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    variants: tuple[str, ...] | list[str] = ("fp32",),
    parity_rows: int = 64,
    force: bool = False,
    register: bool = False,
    max_accuracy_drop: float = gate.MAX_ACCURACY_DROP,
    min_agreement: float = gate.MIN_AGREEMENT,
) -> tuple[list[Path], list[Path], list[str], list[str]]:
    """Write `<out_dir>/<run name>-<variant>/` per variant that passes every task's gate:
    (accepted, refused, messages, registered tags). A refused one goes to `refused/`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    wanted = parse_variants(tuple(variants))
    if unsupported := [v for v in wanted if v not in MULTITASK_VARIANTS]:
        raise ValueError(
            f"a multi-task model exports as {', '.join(MULTITASK_VARIANTS)}; not {unsupported}"
        )
    src = read_multitask_run(run_dir, parity_rows)
    gate_kw = dict(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement)
    fp32_dir = out_dir / f"{src.config.name}-fp32"
    accepted: list[Path] = []
    refused: list[Path] = []
    messages: list[str] = []
    parent: dict[str, np.ndarray] | None = None
    # An fp32 exported here earlier stays after an export that did not ask for it: it is
    # rebuilt as the parent either way, and removing it would take a model away.
    fp32_was_there = fp32_dir.is_dir()
    for variant in ("fp32", *(v for v in wanted if v != "fp32")):
        target = out_dir / f"{src.config.name}-{variant}"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            manifest, logits = _build_variant(
                variant, partial, src, run_dir, fp32_dir, parent, gate_kw, force
            )
        except BaseException:  # nothing half-written stays behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
        keep = manifest.gate["passed"] or force
        destination = target if keep else out_dir / "refused" / target.name
        shutil.rmtree(destination, ignore_errors=True)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(destination)
        reasons = "; ".join(manifest.gate["reasons"])
        if variant == "fp32":
            parent = logits
            if not keep:
                raise ValueError(
                    f"{target.name}: the fp32 graph does not match torch ({reasons}); "
                    f"kept in {destination}"
                )
        if keep:
            accepted.append(destination)
            continue
        refused.append(destination)
        messages.append(
            f"{target.name} refused by the accuracy gate: {reasons}. It was kept aside, not "
            "registered; pass --force to keep it anyway"
        )
        log.warning("%s", messages[-1])
    if "fp32" not in wanted and fp32_dir in accepted:
        accepted.remove(fp32_dir)
        if not fp32_was_there:
            shutil.rmtree(fp32_dir, ignore_errors=True)
    registered = [registry.register(d).tag for d in accepted] if register else []
    return accepted, refused, messages, registered
