"""Export a training run to ONNX model directories, one per variant, each gated and checked.

Every family exports the same way: the classifier module (backbone + pooling + head) is
traced whole with `torch.onnx.export`, so the graph maps `input_ids`, `attention_mask` to
`logits`. optimum's exporter is not used: it knows the library's own task heads, not our
pooling heads (mean pooling, bidirectional masks, label-word rows), which it cannot trace.

Each variant (export/variants.py) is then scored on the full test split through the serving
runtime (service/runtime.py: the server's tokenizer path, not torch's) and passed through the
accuracy gate against its fp32 parent (export/scoring.py, export/gate.py). Its manifest
records that accuracy, its parity with torch and with fp32, the gate's verdict, file sizes and
the sha256 of every file. A refused variant is moved to `<out>/refused/<name>/` and never
registered, unless forced.

Every directory also holds what the Hugging Face stack reads (export/hf_files.py: config.json,
tokenizer_config.json), so optimum's ORTModelForSequenceClassification and
transformers.pipeline load it, and a model card (export/model_card.py) that says whether they
give the served answers, as checked on test texts at export.

A multi-task run (training/multitask.py) exports as one directory serving every task
(export/multitask.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import devices, registry
from core.config import TrainConfig
from core.data import Dataset, dataset_for
from core.manifest import MANIFEST_NAME, MODEL_NAME, Manifest, sha256_of
from core.preprocessing import TextEncoder
from core.run_record import RunRecord, read_predictions
from export import gate, hf_files, int8_recipes, model_card, multitask
from export import variants as variants_mod
from export.int8_search import SearchData, selection_sample
from export.scoring import Checked, Reference, check_variant
from export.variants import PRECISION, parse_variants
from service.runtime import OnnxClassifier
from training.evaluate import gold, predict_logits
from training.families import Classifier
from training.run_dir import load_run

log = logging.getLogger(__name__)

OPSET = 17
# What `smallcls export` builds unless told otherwise: quick, and what the demo serves.
DEFAULT_VARIANTS = ("fp32", "int8")


class LogitsOnly(torch.nn.Module):
    """The classifier with a plain (input_ids, attention_mask) -> logits signature."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask)["logits"]


def export_onnx(model: Classifier, tokenizer, path: Path, max_length: int) -> None:
    # Two texts of different lengths, so the trace sees real padding in attention_mask.
    sample = tokenizer(
        ["a short one", "a somewhat longer example sentence to pad against"],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    wrapper = LogitsOnly(model).eval()
    with torch.inference_mode():
        torch.onnx.export(
            wrapper,
            (sample["input_ids"], sample["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            # The TorchScript exporter: it keeps our 4-D bidirectional mask as traced;
            # measured padded-vs-alone 1e-7 in ONNX for the bidirectional decoder.
            dynamo=False,
        )


@dataclasses.dataclass(frozen=True)
class ExportResult:
    accepted: list[Path]  # model directories that passed the gate (or were forced)
    refused: list[Path]  # directories kept aside under <out>/refused/
    messages: list[str]  # one line per refused variant, for the user
    registered: list[str]  # BentoML tags, when asked to register


def calibration_sample(texts: list[str], rows: int, seed: int) -> list[str]:
    """A seeded sample of training texts: static int8 must see what the model will serve,
    never the test split it is judged on."""
    rng = random.Random(seed)
    return rng.sample(texts, min(rows, len(texts)))


@dataclasses.dataclass(frozen=True)
class _Source:
    """What every variant of one run is built from and checked against."""

    model: Classifier
    tokenizer: Any
    config: TrainConfig
    record: RunRecord
    dataset: Dataset
    reference: Reference  # the test split, the run's answers, torch's logits


def _read_source(run_dir: Path, parity_rows: int) -> _Source:
    """The trained model, its contract and its test split, checked to be the run's own."""
    if (run_dir / "tasks.json").is_file():  # multi-task runs go to export/multitask.py
        raise ValueError(
            f"{run_dir} is a multi-task run trained before task contracts were recorded "
            "(no multitask.json): train it again to export it"
        )
    model, tokenizer, config, labels = load_run(run_dir)
    record = RunRecord.read(run_dir)
    if record.labels != labels:
        raise ValueError(f"{run_dir}: contract labels {record.labels} != model labels {labels}")
    dataset = dataset_for(config)
    answers = read_predictions(run_dir)
    if dataset.label_names != labels or len(answers) != len(dataset.test):
        raise ValueError(
            f"{run_dir}: the dataset now gives labels {dataset.label_names[:5]}... and "
            f"{len(dataset.test)} test rows, the run had {labels[:5]}... and {len(answers)}: "
            "the data files changed since training; train again"
        )
    encoder = TextEncoder(tokenizer.backend_tokenizer, record.preprocessing)
    torch_logits = predict_logits(
        model, encoder, dataset.test.texts[:parity_rows], batch_size=config.eval_batch_size
    )
    reference = Reference(
        rule=record.decision,
        texts=dataset.test.texts,
        y_true=gold(dataset, dataset.test),
        run_answers=answers,
        torch_logits=torch_logits,
    )
    return _Source(model, tokenizer, config, record, dataset, reference)


def _build(
    variant: str, src: _Source, fp32_dir: Path, partial: Path, rows: int, show_progress: bool
) -> dict:
    """Write `partial/model.onnx` for one variant; returns how it was made."""
    source, target = fp32_dir / MODEL_NAME, partial / MODEL_NAME
    if variant == "fp32":
        export_onnx(src.model, src.tokenizer, target, src.config.max_length)
        return {}
    if variant == "fp32-opt":
        model_type = src.model.backbone.config.model_type
        return variants_mod.optimize_fp32(source, target, model_type=model_type)
    if variant == "int8":
        return variants_mod.quantize_int8_dynamic(source, target)
    if variant in int8_recipes.RECIPES:
        return int8_recipes.build(variant, source, target, _search_data(src, fp32_dir, rows))
    if variant == "int8-static":
        encoder = OnnxClassifier(fp32_dir, threads=torch.get_num_threads())
        texts = calibration_sample(src.dataset.train.texts, rows, src.config.seed)
        return variants_mod.quantize_int8_static(
            source,
            target,
            calibration_texts=texts,
            encode=encoder.encode,
            show_progress=show_progress,
        )
    return variants_mod.convert_fp16(source, target)


def _search_data(src: _Source, fp32_dir: Path, rows: int) -> SearchData:
    """Training and validation texts for the recipes that measure their settings."""
    encoder = OnnxClassifier(fp32_dir, threads=torch.get_num_threads())
    train, seed = src.dataset.train.texts, src.config.seed
    return SearchData(
        model_type=src.model.backbone.config.model_type,
        calibration_texts=calibration_sample(train, rows, seed),
        selection_texts=selection_sample(src.dataset.validation.texts, train, 400, seed),
        encode=encoder.encode,
        rule=src.record.decision,
        threads=torch.get_num_threads(),
    )


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What every variant of one export shares."""

    base: dict[str, Any]  # the manifest fields that come from the run
    gate_kw: dict[str, Any]
    fp32_dir: Path
    parity_rows: int
    calibration_rows: int
    force: bool
    show_progress: bool
    device: str  # where the gate scores (cpu, cuda, auto)


def _file_evidence(model_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """sha256 and size of every file but the manifest: the service verifies them all, and
    the model store copies what the manifest lists."""
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    return (
        {n: sha256_of(model_dir / n) for n in names},
        {n: (model_dir / n).stat().st_size for n in names},
    )


def _export_variant(
    variant: str,
    target: Path,
    partial: Path,
    src: _Source,
    fp32_logits: np.ndarray | None,
    settings: _Settings,
) -> tuple[Manifest, Checked]:
    """Build one variant into `partial`, gate it, check it with optimum and write its card."""
    log.info("%s: building", target.name)
    start = time.perf_counter()
    hf_files.write_tokenizer_files(partial, src.tokenizer, src.record.preprocessing)
    hf_files.write_config(partial, src.model.backbone.config, src.record.decision)
    built = _build(
        variant, src, settings.fp32_dir, partial, settings.calibration_rows, settings.show_progress
    )
    files, sizes = _file_evidence(partial)
    manifest = Manifest(
        name=target.name,
        precision=PRECISION[variant],
        variant=variant,
        files=files,
        file_sizes=sizes,
        quantization=built if variant.startswith("int8") else {},
        optimization=built if variant in ("fp32-opt", "fp16") else {},
        **settings.base,
    )
    manifest.write(partial)
    export_seconds = round(time.perf_counter() - start, 1)
    checked = check_variant(
        variant,
        partial,
        src.reference,
        fp32_logits,
        settings.gate_kw,
        force=settings.force,
        show_progress=settings.show_progress,
        device=settings.device,
    )
    manifest = dataclasses.replace(
        manifest,
        metrics={"export_seconds": export_seconds, **checked.metrics},
        parity=checked.parity,
        gate=checked.gate,
        verified_on=checked.verified_on,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.write(partial)  # the runtime that the optimum check compares with reads it
    check = None
    if checked.gate.get("checked_on") == "cpu":
        texts = src.dataset.test.texts[: settings.parity_rows]
        check = hf_files.check_with_pipeline(partial, manifest, texts)
    model_card.write_card(partial, manifest, check)
    files, sizes = _file_evidence(partial)  # now with the card
    manifest = dataclasses.replace(manifest, files=files, file_sizes=sizes)
    manifest.write(partial)
    return manifest, checked


def _place(partial: Path, target: Path, out_dir: Path, keep: bool) -> Path:
    """Move a checked build to its name (accepted) or under refused/ (never registered);
    a stale copy under the other name goes, so nothing old lingers beside it."""
    aside = out_dir / "refused" / target.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    destination = target if keep else aside
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(destination)
    return destination


def export_model(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS,
    parity_rows: int = 64,
    calibration_rows: int = 256,
    force: bool = False,
    register: bool = False,
    max_accuracy_drop: float = gate.MAX_ACCURACY_DROP,
    min_agreement: float = gate.MIN_AGREEMENT,
    show_progress: bool = False,
    device: str = "auto",
    prefix_cache: bool = False,
) -> ExportResult:
    """Write `<out_dir>/<run name>-<variant>/` for each variant that passes the gate.
    `show_progress`: bars for scoring the test split and for calibration. `device`: where the
    gate scores each variant (export/scoring.py `where_to_check`); `cuda` without a usable
    CUDA provider is refused before anything is built. `prefix_cache`: a prompted label-word
    run's fp32 directory also gets the graph with past keys/values (export/prefix_cache.py)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    devices.resolve(device)  # `cuda` that cannot run here: one line now, not after the build
    wanted = parse_variants(tuple(variants))
    if multitask.is_multitask_run(run_dir):  # one model dir serving every task
        return ExportResult(
            *multitask.export_multitask(
                run_dir,
                out_dir,
                variants=wanted,
                parity_rows=parity_rows,
                force=force,
                register=register,
                max_accuracy_drop=max_accuracy_drop,
                min_agreement=min_agreement,
            )
        )
    src = _read_source(run_dir, parity_rows)
    record = src.record
    if prefix_cache and (record.head != "label_words" or record.family != "causal_lm"):
        raise ValueError(
            f"{run_dir}: a prefix cache is for prompted causal label-word models; this run's "
            f"head is {record.head!r} ({record.family})"
        )
    base = dict(
        family=record.family,
        head=record.head,
        base_model=record.base_model,
        labels=record.labels,
        preprocessing=record.preprocessing,
        decision=record.decision,
        dataset=record.dataset.to_dict(),
        source_run=str(run_dir.resolve()),
        parameters=sum(p.numel() for p in src.model.parameters()),
    )
    settings = _Settings(
        base=base,
        gate_kw=dict(
            rule=record.decision, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement
        ),
        fp32_dir=out_dir / f"{src.config.name}-fp32",
        parity_rows=parity_rows,
        calibration_rows=calibration_rows,
        force=force,
        show_progress=show_progress,
        device=device,
    )
    accepted: list[Path] = []
    refused: list[Path] = []
    messages: list[str] = []
    fp32_dir = settings.fp32_dir
    fp32_logits: np.ndarray | None = None
    partial: Path | None = None
    # An fp32 exported here earlier stays after an export that did not ask for it: it is
    # rebuilt as the parent either way, and removing it would take a model away.
    fp32_was_there = fp32_dir.is_dir()
    try:
        # Every variant derives from fp32, so fp32 is built whenever anything is asked for.
        for variant in ("fp32", *(v for v in wanted if v != "fp32")):
            target = out_dir / f"{src.config.name}-{variant}"
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            manifest, checked = _export_variant(
                variant, target, partial, src, fp32_logits, settings
            )
            result = checked.result
            keep = checked.gate["passed"] or force
            placed = _place(partial, target, out_dir, keep)
            if variant == "fp32":
                fp32_logits = checked.logits
            if keep:
                accepted.append(placed)
                _log_accepted(manifest, result)
                continue
            refused.append(placed)
            message = (
                result.message(target.name)
                if result
                else f"{target.name} refused: {checked.gate['reasons'][0]}; kept in {placed}"
            )
            messages.append(message)
            log.warning("%s", message)
            if variant == "fp32":
                raise ValueError(
                    f"{message} (the fp32 graph does not match torch; no variant can be "
                    "derived from it)"
                )
    except BaseException:
        # A failed or interrupted build leaves no half-written directory behind.
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise

    if prefix_cache and fp32_dir in accepted:  # before registering: the store copies it
        from export.prefix_cache import add_prefix_cache

        add_prefix_cache(fp32_dir, src.model, src.dataset.test.texts)
    if "fp32" not in wanted and fp32_dir in accepted:
        accepted.remove(fp32_dir)
        if not fp32_was_there:
            shutil.rmtree(fp32_dir, ignore_errors=True)
    registered = [registry.register(d).tag for d in accepted] if register else []
    return ExportResult(accepted, refused, messages, registered)


def _log_accepted(manifest: Manifest, result: gate.GateResult | None) -> None:
    metric = result.metric if result else "accuracy"
    value = manifest.metrics.get(metric)
    log.info(
        "%s: %s %s, agreement vs parent %.4f, vs the run's answers %s, max |Δlogit| %.2e, "
        "%.1f MB%s",
        manifest.name,
        metric,
        f"{value:.4f}" if value is not None else "n/a",
        result.agreement if result else float("nan"),
        manifest.parity.get("answer_agreement_vs_run", "n/a"),
        result.max_abs_logit_diff if result else float("nan"),
        manifest.file_sizes[MODEL_NAME] / 1e6,
        " (FORCED past the gate)" if manifest.gate.get("forced") else "",
    )


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS,
    **kwargs: Any,
) -> list[Path]:
    """The accepted model directories of `export_model` (refusals are logged)."""
    return export_model(run_dir, out_dir, variants=variants, **kwargs).accepted
