"""Scoring a model directory on the test split through the serving runtime, with progress.

The gate judges what the server will run: `service.runtime.OnnxClassifier` (its tokenizer
path and feeds), on the device the variant is meant for. A full test split takes minutes for
a decoder, so the loop shows a bar (rows done / total and rate) unless told to be quiet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm.auto import tqdm

from core.manifest import MODEL_NAME
from export.variants import cuda_available
from service.runtime import OnnxClassifier, make_session

BATCH_SIZE = 32


def session_on(model_path: Path, device: str, threads: int) -> ort.InferenceSession:
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
    onnx_model = OnnxClassifier(model_dir, threads=threads)
    if device != "cpu":
        onnx_model.session = session_on(model_dir / MODEL_NAME, device, threads)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(onnx_model.labels)), dtype=np.float32)  # (N, L)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress) as bar:
        for first in range(0, len(order), BATCH_SIZE):
            idx = order[first : first + BATCH_SIZE]
            out[idx] = onnx_model.logits([texts[i] for i in idx])
            bar.update(len(idx))
    return out, round(time.perf_counter() - start, 2)


def where_to_check(variant: str, model_dir: Path) -> tuple[str | None, dict[str, Any]]:
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
