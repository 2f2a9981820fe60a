"""Sensitivity-guided mixed precision: keep in float the fewest MatMuls that keep the answers.

Dynamic int8 quantizes each MatMul's input per tensor, so a layer whose input carries a few
huge channels loses most of its resolution; which layers those are differs by model (the
demo's SmolLM2 lost labels in more places than its MLP outputs). This module

1. ranks every quantizable MatMul (and fused Attention) by the error int8 adds to its own
   output, measured on held-out texts: the fp32 graph runs once with the layers' inputs
   exposed, and each product is recomputed in numpy with onnxruntime's dynamic scheme
   (uint8 asymmetric activations per tensor, int8 symmetric weights per column);
2. quantizes with the top-k of that ranking left in float, k = n/32, n/16, ... until the
   answers agree with fp32 on the selection texts (export/int8_search.py), then bisects
   between the last failing and the first passing k.

Step 1 is a ranking, step 2 the measurement of agreement that decides; re-quantizing once
per MatMul to measure each one's agreement alone would cost about 200 builds for SmolLM2.
onnxruntime's qdq_loss_debug compares QDQ graphs only, so the ranking is written here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from export.int8_search import SELECTION_AGREEMENT, SearchData, agreement, logits_of

log = logging.getLogger(__name__)

QUANTIZABLE = ("MatMul", "Attention")
SENSITIVITY_ROWS = 24  # texts for the ranking: enough to see which layers have outliers
SENSITIVITY_BATCH = 8  # texts per capture: exposed inputs of 200 layers take memory


def weighted_layers(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """{node name: (input tensor name, (K, N) weight)} for MatMul/Attention with a constant
    weight as second input: what dynamic int8 quantizes."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE and len(node.input) > 1 and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
            if weight.ndim == 2:
                found[node.name] = (node.input[0], weight.astype(np.float32))
    return found


def fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """uint8 asymmetric per-tensor round trip, as DynamicQuantizeLinear does (range incl. 0)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_quant_weight(w: np.ndarray, *, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """int8 symmetric round trip of a (K, N) weight, per output column or per tensor."""
    qmax = 63.0 if reduce_range else 127.0
    peak = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / qmax, 1.0)
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def capture(
    model: onnx.ModelProto, tensors: list[str], feeds_list: list[dict], threads: int
) -> Any:
    """Yield {tensor name: array} for each feed dict, from the fp32 graph with `tensors`
    exposed as extra outputs."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    known = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in known:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Disable fusions: they would hide the exposed tensors inside fused nodes.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        augmented.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in session.get_inputs()}
    for feeds in feeds_list:
        values = session.run(tensors, {k: v for k, v in feeds.items() if k in names})
        yield dict(zip(tensors, values, strict=True))


def rank_layers(
    fp32_path: Path, data: SearchData, *, per_channel: bool = True, reduce_range: bool = False
) -> list[tuple[str, float]]:
    """[(node name, relative output error)] of every quantizable layer, worst first."""
    model = onnx.load(str(fp32_path))
    layers = weighted_layers(model)
    tensors = sorted({x for x, _ in layers.values()})
    texts = data.selection_texts[:SENSITIVITY_ROWS]
    chunks = [texts[i : i + SENSITIVITY_BATCH] for i in range(0, len(texts), SENSITIVITY_BATCH)]
    qweights = {
        n: fake_quant_weight(w, per_channel=per_channel, reduce_range=reduce_range)
        for n, (_, w) in layers.items()
    }
    err = dict.fromkeys(layers, 0.0)
    ref = dict.fromkeys(layers, 0.0)
    for values in capture(model, tensors, [data.encode(c) for c in chunks], data.threads):
        qx = {name: fake_quant_activation(v) for name, v in values.items()}
        for node, (x_name, w) in layers.items():
            exact = values[x_name] @ w  # (B, T, N)
            approx = qx[x_name] @ qweights[node]
            err[node] += float(np.square(approx - exact).sum())
            ref[node] += float(np.square(exact).sum())
    scores = {n: (err[n] / ref[n]) ** 0.5 if ref[n] else 0.0 for n in layers}
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)


Quantize = Callable[[Path, Path, list[str]], None]
QuantizeOnly = Callable[[Path, Path, list[str]], None]  # (src, dst, nodes to quantize)
# Graphs with at most this many layers are ranked end to end (one build per layer, a second
# each for MiniLM); above it (SmolLM2: 210 MatMuls, ~20 s a build) by local error.
END_TO_END_MAX_LAYERS = 48
END_TO_END_ROWS = 128


def rank_end_to_end(
    fp32_path: Path, data: SearchData, quantize_only: QuantizeOnly, scratch: Path
) -> list[tuple[str, float]]:
    """[(node name, effect)] worst first, the effect of quantizing that layer alone: the
    mean |logit change| on held-out texts, plus one per answer it flips."""
    texts = data.selection_texts[:END_TO_END_ROWS]
    reference = logits_of(fp32_path, data, texts)
    ours = reference.argmax(-1)
    scores = {}
    for name in weighted_layers(onnx.load(str(fp32_path), load_external_data=False)):
        quantize_only(fp32_path, scratch, [name])
        logits = logits_of(scratch, data, texts)
        flips = float((logits.argmax(-1) != ours).sum())
        scores[name] = flips + float(np.abs(logits - reference).mean())
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)


def fewest_in_float(
    fp32_path: Path,
    out_path: Path,
    data: SearchData,
    quantize: Quantize,
    *,
    reference_logits: np.ndarray,
    ranking: list[tuple[str, float]],
    target: float = SELECTION_AGREEMENT,
) -> dict[str, Any]:
    """Quantize with the fewest top-ranked layers kept in float that reach `target`
    agreement on the selection texts; `out_path` holds the chosen file. `quantize(src, dst,
    excluded)` builds one candidate."""
    order = [name for name, _ in ranking]
    tried: dict[int, float] = {}  # in build order: the last key is the file on disk

    def attempt(k: int) -> float:
        tried.pop(k, None)
        quantize(fp32_path, out_path, order[:k])
        logits = logits_of(out_path, data, data.selection_texts)
        tried[k] = agreement(logits, reference_logits, data.rule)
        log.info("int8 with %d layers in float: selection agreement %.4f", k, tried[k])
        return tried[k]

    # k = 0 (all int8) was tried by the caller. The first step is 1/32 of the layers (1 for
    # MiniLM, 6 for SmolLM2's 210): each step is a build, ~20 s for SmolLM2.
    low, high = 0, max(1, len(order) // 32)  # low: the largest k known to fail
    while attempt(high) < target:
        if high >= len(order):
            break  # even all in float fails (cannot happen unless the graph is odd)
        low, high = high, min(len(order), high * 2)
    # Bisect until within an eighth of the count: each step is a build (~20 s for SmolLM2)
    # and one or two layers more in float cost little.
    while high - low > max(1, high // 8) and tried[high] >= target:
        mid = (low + high) // 2
        if mid <= low or mid in tried:
            break
        if attempt(mid) >= target:
            high = mid
        else:
            low = mid
    if list(tried)[-1] != high:  # the file on disk is the last attempt: rebuild the chosen
        quantize(fp32_path, out_path, order[:high])
    return {
        "fp32_nodes": high,
        "excluded": order[:high],
        "selection_agreement": tried[high],  # exact: the caller compares it, then rounds
        "tried": {str(k): round(v, 4) for k, v in sorted(tried.items())},
        "ranking_top": [[n, round(s, 4)] for n, s in ranking[:10]],
    }
