"""Export a training run to ONNX model directories, one per variant, each gated and checked.

Every family exports the same way: the classifier module (backbone + pooling + head) is
traced whole with `torch.onnx.export`, so the graph maps `input_ids`, `attention_mask` to
`logits`. optimum's exporter is not used: it knows the library's own task heads, not our
pooling heads (mean pooling, bidirectional masks, label-word rows), which it cannot trace.

Each variant (export/variants.py) is then scored on the full test split through the serving
runtime (service/runtime.py: the server's tokenizer path, not torch's) and passed through the
accuracy gate against its fp32 parent (export/gate.py). Its manifest records that accuracy,
its parity with torch and with fp32, the gate's verdict, file sizes and sha256. A refused
variant is moved to `<out>/refused/<name>/` and never registered, unless forced.
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
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from core import registry
from core.config import TrainConfig
from core.data import Dataset, dataset_for
from core.decision import DecisionRule
from core.manifest import MODEL_NAME, TOKENIZER_NAME, Manifest, sha256_of
from core.metrics import decision_metrics, label_agreement
from core.preprocessing import TextEncoder
from core.run_record import RunRecord, read_predictions
from export import gate
from export import variants as variants_mod
from export.variants import PRECISION, cuda_available, parse_variants
from service.runtime import OnnxClassifier, make_session
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


def _session_on(model_path: Path, device: str, threads: int) -> ort.InferenceSession:
    if device == "cpu":
        return make_session(model_path, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    # onnxruntime-gpu falls back to CPU silently when CUDA libraries are missing.
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("CUDAExecutionProvider did not load (CUDA/cuDNN libraries missing?)")
    return session


def _score(model_dir: Path, texts: list[str], *, device: str = "cpu") -> tuple[np.ndarray, float]:
    """(N, L) logits of the serving code path on `device`, and the seconds it took."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    onnx_model = OnnxClassifier(model_dir, threads=threads)
    if device != "cpu":
        onnx_model.session = _session_on(model_dir / MODEL_NAME, device, threads)
    logits = onnx_model.logits_batched(texts)
    return logits, round(time.perf_counter() - start, 2)


def _where_to_check(variant: str, model_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The device the gate scores a variant on, and what the manifest says about devices.

    fp16 is for GPUs. With CUDA it is checked there; without, it is checked on CPU when
    onnxruntime's CPU provider can run it at all, and its manifest says the GPU is unverified.
    """
    if variant != "fp16":
        return "cpu", {"cpu": True, "gpu": False}
    if cuda_available():
        return "cuda", {"cpu": False, "gpu": True}
    try:
        make_session(model_dir / MODEL_NAME, 1)
    except Exception as exc:  # onnxruntime raises its own (NOT_IMPLEMENTED) for missing kernels
        note = f"onnxruntime CPU cannot run it: {str(exc).splitlines()[0][:200]}"
        return None, {"cpu": False, "gpu": False, "notes": [note, "no CUDA here"]}
    return "cpu", {
        "cpu": True,
        "gpu": False,
        "notes": ["checked on CPU only; no CUDA here, so unverified on GPU"],
    }


@dataclasses.dataclass(frozen=True)
class _Source:
    """What every variant of one run is built from and checked against."""

    model: Classifier
    tokenizer: Any
    config: TrainConfig
    record: RunRecord
    dataset: Dataset
    y_true: np.ndarray  # (N,) label ids or (N, L) 0/1, for the test split
    run_answers: list[dict[str, Any]]  # the run's own answer per test row
    torch_logits: np.ndarray  # (parity_rows, L)


def _read_source(run_dir: Path, parity_rows: int) -> _Source:
    """The trained model, its contract and its test split, checked to be the run's own."""
    if (run_dir / "tasks.json").is_file():
        raise ValueError(
            f"{run_dir} is a multi-task run: a served model answers one task, so export one "
            "run per task (train each task alone) to serve it"
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
    y_true = gold(dataset, dataset.test)
    return _Source(model, tokenizer, config, record, dataset, y_true, answers, torch_logits)


def _save_tokenizer(tokenizer: Any, path: Path) -> None:
    """tokenizer.json without padding or truncation baked in (some hub files pad every text to
    128): the manifest's preprocessing decides both, for us and for any other reader."""
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(path))


def _build(variant: str, src: _Source, fp32_dir: Path, partial: Path, rows: int) -> dict:
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
    if variant == "int8-static":
        encoder = OnnxClassifier(fp32_dir, threads=torch.get_num_threads())
        texts = calibration_sample(src.dataset.train.texts, rows, src.config.seed)
        return variants_mod.quantize_int8_static(
            source, target, calibration_texts=texts, encode=encoder.encode
        )
    return variants_mod.convert_fp16(source, target)


def _agreement_with_run(rule: DecisionRule, logits: np.ndarray, answers: list[dict]) -> float:
    """Share of test rows whose answer (label set) equals the run's own evaluated answer."""
    served = rule.answers(rule.decide(logits))
    same = [a["labels"] == b["labels"] for a, b in zip(served, answers, strict=True)]
    return float(np.mean(same)) if same else 1.0


@dataclasses.dataclass(frozen=True)
class _Checked:
    metrics: dict[str, Any]  # of this file, through the serving code, on the test split
    parity: dict[str, Any]
    gate: dict[str, Any]  # the manifest's record of the verdict
    verified_on: dict[str, Any]
    result: gate.GateResult | None = None  # None: nothing here could run it
    logits: np.ndarray | None = None


def _check(
    variant: str,
    src: _Source,
    partial: Path,
    fp32_logits: np.ndarray | None,
    gate_kw: dict[str, Any],
    force: bool,
) -> _Checked:
    """Score the variant through the serving code on the whole test split and gate it."""
    rule = src.record.decision
    device, verified_on = _where_to_check(variant, partial)
    parity: dict[str, Any] = {"rows": len(src.torch_logits)}
    if device is None:
        # Nothing here can run it: kept with its manifest saying so, never "passed".
        reasons = ["not checked: no device here can run it"]
        return _Checked(
            {}, parity, {"passed": False, "forced": force, "reasons": reasons}, verified_on
        )
    logits, seconds = _score(partial, src.dataset.test.texts, device=device)
    metrics = decision_metrics(rule, rule.decide(logits), src.y_true) | {"seconds": seconds}
    head = logits[: len(src.torch_logits)]
    parity["max_abs_logit_diff_vs_torch"] = float(np.abs(head - src.torch_logits).max())
    parity["label_agreement_vs_torch"] = label_agreement(head, src.torch_logits)
    parity["answer_agreement_vs_run"] = _agreement_with_run(rule, logits, src.run_answers)
    if fp32_logits is None:  # fp32 itself is judged against torch on the parity rows
        result = gate.check(head, src.torch_logits, src.y_true[: len(head)], **gate_kw)
    else:
        result = gate.check(logits, fp32_logits, src.y_true, **gate_kw)
        parity["max_abs_logit_diff_vs_fp32"] = result.max_abs_logit_diff
        parity["label_agreement_vs_fp32"] = result.agreement
    record = {**result.as_dict(), "forced": force and not result.passed, "checked_on": device}
    return _Checked(metrics, parity, record, verified_on, result, logits)


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
) -> ExportResult:
    """Write `<out_dir>/<run name>-<variant>/` for each variant that passes the gate."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    wanted = parse_variants(tuple(variants))
    src = _read_source(run_dir, parity_rows)
    record = src.record
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
    gate_kw = dict(
        rule=record.decision, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement
    )
    accepted: list[Path] = []
    refused: list[Path] = []
    messages: list[str] = []
    fp32_dir = out_dir / f"{src.config.name}-fp32"
    fp32_logits: np.ndarray | None = None
    partial: Path | None = None
    try:
        # Every variant derives from fp32, so fp32 is built whenever anything is asked for.
        for variant in ("fp32", *(v for v in wanted if v != "fp32")):
            target = out_dir / f"{src.config.name}-{variant}"
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log.info("%s: building", target.name)
            start = time.perf_counter()
            _save_tokenizer(src.tokenizer, partial / TOKENIZER_NAME)
            built = _build(variant, src, fp32_dir, partial, calibration_rows)
            names = (MODEL_NAME, TOKENIZER_NAME)
            manifest = Manifest(
                name=target.name,
                precision=PRECISION[variant],
                variant=variant,
                files={n: sha256_of(partial / n) for n in names},
                file_sizes={n: (partial / n).stat().st_size for n in names},
                quantization=built if variant.startswith("int8") else {},
                optimization=built if variant in ("fp32-opt", "fp16") else {},
                **base,
            )
            manifest.write(partial)
            export_seconds = round(time.perf_counter() - start, 1)
            checked = _check(variant, src, partial, fp32_logits, gate_kw, force)
            result = checked.result
            manifest = dataclasses.replace(
                manifest,
                metrics={"export_seconds": export_seconds, **checked.metrics},
                parity=checked.parity,
                gate=checked.gate,
                verified_on=checked.verified_on,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            )
            manifest.write(partial)
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

    if "fp32" not in wanted and fp32_dir in accepted:
        shutil.rmtree(fp32_dir, ignore_errors=True)
        accepted.remove(fp32_dir)
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
