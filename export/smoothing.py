"""SmoothQuant-style smoothing of an ONNX graph: move activation outliers into the weights.

"SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
(Xiao et al., 2023, https://arxiv.org/abs/2211.10438): for Y = X W, a few input channels of X
are far larger than the rest, so per-tensor int8 of X spends its range on them. With
s_k = max|X_k|^alpha / max|W_k,:|^(1 - alpha), Y = (X / s) (s W) exactly, and both factors
quantize better. alpha trades where the difficulty goes (0.5 in the paper).

Written on the ONNX graph rather than on torch modules so that it needs no torch and applies
to any family: layers reading the same tensor (q/k/v, gate/up) share one s; s is folded into
the constant scale that produced that tensor when there is one (the weight Mul of RMSNorm, a
LayerNormalization's scale and bias), and otherwise applied by one inserted Mul.
onnxruntime's own smoothing lives in its Intel Neural Compressor bridge, which needs the
neural-compressor package (not installed here).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.int8_search import SearchData
from export.sensitivity import capture, weighted_layers

CALIBRATION_ROWS = 64
CALIBRATION_BATCH = 8
MIN_SCALE = 1e-5  # s below this (dead channels) would blow the weights up


def channel_peaks(model: onnx.ModelProto, tensors: list[str], data: SearchData) -> dict:
    """{tensor: (K,) max |value| per last-axis channel} over calibration texts."""
    texts = data.calibration_texts[:CALIBRATION_ROWS]
    chunks = [texts[i : i + CALIBRATION_BATCH] for i in range(0, len(texts), CALIBRATION_BATCH)]
    peaks: dict[str, np.ndarray] = {}
    for values in capture(model, tensors, [data.encode(c) for c in chunks], data.threads):
        for name, value in values.items():
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _constant_scale_of(model: onnx.ModelProto, tensor: str, size: int):
    """The producer of `tensor` and its 1-D constant(s) of `size` that s can be folded into
    (Mul by a constant vector; LayerNormalization scale and bias), or None."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = next((n for n in model.graph.node if tensor in n.output), None)
    if producer is None:
        return None
    if producer.op_type == "Mul":
        consts = [i for i in producer.input if i in inits]
        if len(consts) == 1 and numpy_helper.to_array(inits[consts[0]]).shape == (size,):
            return producer, consts
    if producer.op_type == "LayerNormalization" and producer.output[0] == tensor:
        consts = [i for i in producer.input[1:3] if i in inits]
        if consts and all(numpy_helper.to_array(inits[c]).shape == (size,) for c in consts):
            return producer, consts
    return None


def smooth(
    fp32_path: Path, out_path: Path, data: SearchData, alpha: float, *, fold_only: bool = False
) -> dict[str, Any]:
    """Write the smoothed fp32 graph (same function, outliers moved into weights).
    `fold_only`: smooth only inputs whose s folds into a constant, inserting no Mul: a graph
    to be fused afterwards keeps the patterns the fusions look for."""
    model = onnx.load(str(fp32_path))
    layers = weighted_layers(model)
    readers: dict[str, list[str]] = collections.defaultdict(list)
    for node, (x_name, _) in layers.items():
        readers[x_name].append(node)
    peaks = channel_peaks(model, sorted(readers), data)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    consumers = collections.Counter(i for n in model.graph.node for i in n.input)
    folded = inserted = 0
    for x_name, names in readers.items():
        fold = _constant_scale_of(model, x_name, peaks[x_name].shape[-1])
        # Folding changes the producer's output for every reader: only when all are ours.
        foldable = fold is not None and consumers[x_name] == len(names)
        if fold_only and not foldable:
            continue
        w_peak = np.max([np.abs(layers[n][1]).max(axis=1) for n in names], axis=0)  # (K,)
        s = peaks[x_name] ** alpha / np.maximum(w_peak, 1e-8) ** (1 - alpha)
        s = np.where(np.isfinite(s) & (s > MIN_SCALE), s, 1.0).astype(np.float32)
        for name in names:  # W' = diag(s) W; a weight shared by two readers is scaled once
            weight = inits[nodes[name].input[1]]
            weight.CopyFrom(numpy_helper.from_array(layers[name][1] * s[:, None], weight.name))
        if foldable:
            for const in fold[1]:
                value = numpy_helper.to_array(inits[const]) / s
                inits[const].CopyFrom(numpy_helper.from_array(value.astype(np.float32), const))
            folded += 1
            continue
        scaled, inv = f"{x_name}_smoothed", f"{x_name}_smooth_inv"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / s, inv))
        mul = helper.make_node("Mul", [x_name, inv], [scaled], name=f"{x_name}_smooth")
        model.graph.node.append(mul)
        for name in names:
            nodes[name].input[0] = scaled
        inserted += 1
    _topological_sort(model)
    onnx.save(model, str(out_path))
    return {"alpha": alpha, "smoothed": folded + inserted, "folded": folded, "muls": inserted}


def _topological_sort(model: onnx.ModelProto) -> None:
    """Put inserted nodes before their readers (ONNX requires nodes in topological order)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input after smoothing")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
