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
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from core import registry
from core.manifest import MODEL_NAME, TOKENIZER_NAME, Manifest, sha256_of
from core.metrics import classification_metrics, label_agreement
from export import gate
from export import variants as variants_mod
from export.variants import PRECISION, cuda_available, parse_variants
from service.runtime import OnnxClassifier, make_session
from training.families import Classifier
from training.run_dir import load_run
from training.train import dataset_for, predict_logits

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


def read_thresholds(run_dir: Path) -> tuple[str, list[float] | None]:
    """`<run>/model/thresholds.json` = {"problem_type": "multi_label", "thresholds": [...]},
    written by multi-label training; absent for single-label runs."""
    path = run_dir / "model" / "thresholds.json"
    if not path.is_file():
        return "single_label", None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get("problem_type", "multi_label"), data.get("thresholds")


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
    model, tokenizer, config, labels = load_run(run_dir)
    problem_type, thresholds = read_thresholds(run_dir)
    dataset = dataset_for(config)
    if dataset.label_names != labels:
        raise ValueError(f"the dataset's labels {dataset.label_names} != the run's {labels}")
    texts, label_ids = dataset.test.texts, dataset.label_ids(dataset.test)
    # Multi-label test labels are not loaded by core.data yet: the gate then checks
    # agreement (exact label sets) and finiteness, not accuracy.
    y_true = np.asarray(label_ids) if problem_type == "single_label" else None
    parity_texts = texts[:parity_rows]
    torch_logits = predict_logits(
        model,
        tokenizer,
        parity_texts,
        max_length=config.max_length,
        batch_size=config.eval_batch_size,
        template=config.prompt_template,
    )
    base = dict(
        family=config.family,
        head=config.head,
        base_model=config.base_model,
        labels=labels,
        max_length=config.max_length,
        pad_token_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
        truncation_side=tokenizer.truncation_side,
        prompt_template=config.prompt_template,
        problem_type=problem_type,
        thresholds=thresholds,
        source_run=str(run_dir.resolve()),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    model_type = model.backbone.config.model_type
    gate_kw = dict(
        problem_type=problem_type,
        thresholds=thresholds,
        max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement,
    )

    accepted: list[Path] = []
    refused: list[Path] = []
    messages: list[str] = []
    fp32_dir = out_dir / f"{config.name}-fp32"
    fp32_logits: np.ndarray | None = None
    # Every variant derives from fp32, so fp32 is built whenever anything is asked for.
    partial: Path | None = None
    try:
        for variant in ("fp32", *(v for v in wanted if v != "fp32")):
            target = out_dir / f"{config.name}-{variant}"
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log.info("%s: building", target.name)
            start = time.perf_counter()
            tokenizer.backend_tokenizer.save(str(partial / TOKENIZER_NAME))
            built: dict[str, Any] = {}
            src = fp32_dir / MODEL_NAME
            dst = partial / MODEL_NAME
            if variant == "fp32":
                export_onnx(model, tokenizer, dst, config.max_length)
            elif variant == "fp32-opt":
                built = variants_mod.optimize_fp32(src, dst, model_type=model_type)
            elif variant == "int8":
                built = variants_mod.quantize_int8_dynamic(src, dst)
            elif variant == "int8-static":
                encoder = OnnxClassifier(fp32_dir, threads=torch.get_num_threads())
                built = variants_mod.quantize_int8_static(
                    src,
                    dst,
                    calibration_texts=calibration_sample(
                        dataset.train.texts, calibration_rows, config.seed
                    ),
                    encode=encoder.encode,
                )
            elif variant == "fp16":
                built = variants_mod.convert_fp16(src, dst)
            export_seconds = round(time.perf_counter() - start, 1)
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

            device, verified_on = _where_to_check(variant, partial)
            metrics: dict[str, Any] = {"export_seconds": export_seconds}
            parity: dict[str, Any] = {"rows": len(parity_texts)}
            if device is None:
                # Nothing here can run it: kept with its manifest saying so, never "passed".
                result = None
                gate_record: dict[str, Any] = {
                    "passed": False,
                    "forced": force,
                    "reasons": ["not checked: no device here can run it"],
                }
            else:
                logits, seconds = _score(partial, texts, device=device)
                if y_true is not None:
                    metrics.update(
                        classification_metrics(label_ids, logits.argmax(-1).tolist(), labels)
                    )
                metrics["seconds"] = seconds
                parity_logits = logits[:parity_rows]
                parity["max_abs_logit_diff_vs_torch"] = float(
                    np.abs(parity_logits - torch_logits).max()
                )
                parity["label_agreement_vs_torch"] = label_agreement(parity_logits, torch_logits)
                if variant == "fp32":
                    # The parent is judged against torch on the parity rows.
                    result = gate.check(
                        parity_logits,
                        torch_logits,
                        None if y_true is None else y_true[:parity_rows],
                        **gate_kw,
                    )
                    fp32_logits = logits
                else:
                    assert fp32_logits is not None
                    result = gate.check(logits, fp32_logits, y_true, **gate_kw)
                    parity["max_abs_logit_diff_vs_fp32"] = result.max_abs_logit_diff
                    parity["label_agreement_vs_fp32"] = result.agreement
                gate_record = {**result.as_dict(), "forced": force and not result.passed}
                gate_record["checked_on"] = device
            manifest = dataclasses.replace(
                manifest,
                metrics=metrics,
                parity=parity,
                gate=gate_record,
                verified_on=verified_on,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            )
            manifest.write(partial)

            if gate_record["passed"] or force:
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(out_dir / "refused" / target.name, ignore_errors=True)  # stale
                partial.rename(target)
                accepted.append(target)
                log.info(
                    "%s: accuracy %s, agreement vs parent %.4f, max |Δlogit| %.2e, %.1f MB%s",
                    target.name,
                    f"{metrics['accuracy']:.4f}" if "accuracy" in metrics else "n/a",
                    result.agreement if result else float("nan"),
                    result.max_abs_logit_diff if result else float("nan"),
                    manifest.file_sizes[MODEL_NAME] / 1e6,
                    " (FORCED past the gate)" if gate_record["forced"] else "",
                )
            else:
                aside = out_dir / "refused" / target.name
                shutil.rmtree(aside, ignore_errors=True)
                aside.parent.mkdir(parents=True, exist_ok=True)
                partial.rename(aside)
                shutil.rmtree(target, ignore_errors=True)  # an older accepted copy must not linger
                refused.append(aside)
                message = (
                    result.message(target.name)
                    if result
                    else f"{target.name} refused: {gate_record['reasons'][0]}; kept in {aside}"
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


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS,
    **kwargs: Any,
) -> list[Path]:
    """The accepted model directories of `export_model` (refusals are logged)."""
    return export_model(run_dir, out_dir, variants=variants, **kwargs).accepted
