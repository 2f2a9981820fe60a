"""Scoring a variant on the test split through the serving runtime, and gating it.

The gate judges what the server will run: `service.runtime.OnnxClassifier` (its tokenizer
path and feeds), on the device the variant is meant for, against its references (torch's
logits, the fp32 parent's, the run's own answers). A full test split takes minutes for a
decoder, so the loop shows a bar (rows done / total and rate) unless told to be quiet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from core import devices
from core.decision import DecisionRule
from core.manifest import MODEL_NAME
from core.metrics import decision_metrics, label_agreement
from export import gate
from service.runtime import OnnxClassifier, make_session

log = logging.getLogger(__name__)

BATCH_SIZE = 32


def score(
    model_dir: Path,
    texts: list[str],
    *,
    threads: int,
    device: str = "cpu",
    show_progress: bool = False,
    desc: str = "scoring",
) -> tuple[np.ndarray, float]:
    """(N, L) logits of the serving code path on `device`, and the seconds it took.

    Batches are formed from texts sorted by length (as `OnnxClassifier.logits_batched` does),
    so padding stays small; the loop is ours so that it can report progress."""
    start = time.perf_counter()
    # On CUDA the session refuses onnxruntime's silent fallback to the CPU (core/devices.py).
    onnx_model = OnnxClassifier(model_dir, threads=threads, device=device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(onnx_model.labels)), dtype=np.float32)  # (N, L)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress) as bar:
        for first in range(0, len(order), BATCH_SIZE):
            idx = order[first : first + BATCH_SIZE]
            out[idx] = onnx_model.logits([texts[i] for i in idx])
            bar.update(len(idx))
    return out, round(time.perf_counter() - start, 2)


def where_to_check(
    variant: str, model_dir: Path, device: str = "auto"
) -> tuple[str | None, dict[str, Any]]:
    """The device the gate scores a variant on, and what the manifest says about devices.

    `device` is export's setting: `cpu` or `cuda` check every variant there (the device it
    will be served on); `auto` checks fp16, which is for GPUs, on CUDA when this onnxruntime
    has it and every other variant on the CPU. fp16 without CUDA is checked on the CPU when
    onnxruntime's CPU provider can run it at all, and its manifest says the GPU is unverified.
    """
    if device == "cuda":
        return "cuda", {"cpu": False, "gpu": True}
    if variant != "fp16":
        return "cpu", {"cpu": True, "gpu": False}
    # auto: CUDA where this onnxruntime has it and its libraries load (core/devices.py).
    if device == "auto" and devices.resolve("auto") == "cuda":
        return "cuda", {"cpu": False, "gpu": True}
    why_cpu = "no CUDA here" if device == "auto" else "device cpu asked for"
    try:
        make_session(model_dir / MODEL_NAME, 1)
    except Exception as exc:  # onnxruntime raises its own (NOT_IMPLEMENTED) for missing kernels
        note = f"onnxruntime CPU cannot run it: {str(exc).splitlines()[0][:200]}"
        return None, {"cpu": False, "gpu": False, "notes": [note, why_cpu]}
    return "cpu", {
        "cpu": True,
        "gpu": False,
        "notes": [f"checked on CPU only ({why_cpu}), so unverified on GPU"],
    }


@dataclasses.dataclass(frozen=True)
class Reference:
    """What every variant of one run is checked against."""

    rule: DecisionRule
    texts: list[str]  # the test split
    y_true: np.ndarray  # (N,) label ids or (N, L) 0/1
    run_answers: list[dict[str, Any]]  # the run's own answer per test row
    torch_logits: np.ndarray  # (parity_rows, L), for the first test rows


@dataclasses.dataclass(frozen=True)
class Checked:
    metrics: dict[str, Any]  # of this file, through the serving code, on the test split
    parity: dict[str, Any]
    gate: dict[str, Any]  # the manifest's record of the verdict
    verified_on: dict[str, Any]
    result: gate.GateResult | None = None  # None: nothing here could run it
    logits: np.ndarray | None = None


def agreement_with_run(rule: DecisionRule, logits: np.ndarray, answers: list[dict]) -> float:
    """Share of test rows whose answer (label set) equals the run's own evaluated answer."""
    served = rule.answers(rule.decide(logits))
    same = [a["labels"] == b["labels"] for a, b in zip(served, answers, strict=True)]
    return float(np.mean(same)) if same else 1.0


def check_variant(
    variant: str,
    model_dir: Path,
    ref: Reference,
    fp32_logits: np.ndarray | None,
    gate_kw: dict[str, Any],
    *,
    force: bool,
    show_progress: bool,
    device: str = "auto",
) -> Checked:
    """Score the variant through the serving code on the whole test split and gate it:
    fp32 against torch on the parity rows, every other variant against fp32."""
    rule = ref.rule
    device, verified_on = where_to_check(variant, model_dir, device)
    parity: dict[str, Any] = {"rows": len(ref.torch_logits)}
    if device is None:
        # Nothing here can run it: kept with its manifest saying so, never "passed".
        reasons = ["not checked: no device here can run it"]
        verdict = {"passed": False, "forced": force, "reasons": reasons}
        return Checked({}, parity, verdict, verified_on)
    name = model_dir.name.removesuffix(".partial")
    logits, seconds = score(
        model_dir,
        ref.texts,
        threads=torch.get_num_threads(),
        device=device,
        show_progress=show_progress,
        desc=f"{name}: test split",
    )
    log.info("%s: scored %d test texts in %.1f s", name, len(logits), seconds)
    metrics = decision_metrics(rule, rule.decide(logits), ref.y_true) | {"seconds": seconds}
    head = logits[: len(ref.torch_logits)]
    parity["max_abs_logit_diff_vs_torch"] = float(np.abs(head - ref.torch_logits).max())
    parity["label_agreement_vs_torch"] = label_agreement(head, ref.torch_logits)
    parity["answer_agreement_vs_run"] = agreement_with_run(rule, logits, ref.run_answers)
    if fp32_logits is None:  # fp32 itself is judged against torch on the parity rows
        result = gate.check(head, ref.torch_logits, ref.y_true[: len(head)], **gate_kw)
    else:
        result = gate.check(logits, fp32_logits, ref.y_true, **gate_kw)
        parity["max_abs_logit_diff_vs_fp32"] = result.max_abs_logit_diff
        parity["label_agreement_vs_fp32"] = result.agreement
    record = {**result.as_dict(), "forced": force and not result.passed, "checked_on": device}
    return Checked(metrics, parity, record, verified_on, result, logits)
