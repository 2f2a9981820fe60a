"""The exported variants of one fp32 graph: graph-optimized, int8 (dynamic, static), fp16.

Each builder reads the fp32 `model.onnx` and writes one new file; it returns a small JSON-able
record of how the file was made, which goes into the manifest. None of them looks at accuracy:
that is the gate's job (export/gate.py), which checks every variant against its fp32 parent.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from core.manifest import VARIANTS

log = logging.getLogger(__name__)

PRECISION = {
    "fp32": "fp32",
    "fp32-opt": "fp32",
    "int8": "int8",
    "int8-static": "int8",
    "fp16": "fp16",
    "int8-fused": "int8",
    "int8-smooth": "int8",
    "int8-w8": "int8",
    "int8-mixed": "int8",
}
# Fused operators worth naming in the manifest (contrib ops made by ORT's optimizers).
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "RotaryEmbedding",
    "MatMulNBits",
    "FusedMatMul",
    "QuickGelu",
)

# A feed builder: texts -> the graph's input arrays (the serving tokenizer path).
Encode = Callable[[list[str]], dict[str, np.ndarray]]


def op_counts(path: Path) -> collections.Counter[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return collections.Counter(n.op_type for n in graph.node)


def fused_ops(path: Path) -> dict[str, int]:
    counts = op_counts(path)
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def parse_variants(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validated variant names in build order; 'all' means every variant."""
    wanted = set(VARIANTS) if "all" in names else set(names)
    bad = sorted(wanted - set(VARIANTS))
    if bad:
        raise ValueError(f"unknown variants {bad}; choose from {', '.join(VARIANTS)} or all")
    if not wanted:
        raise ValueError("no variant asked for")
    return tuple(v for v in VARIANTS if v in wanted)


# --- fp32 with graph optimizations ---------------------------------------------------------


def optimize_fp32(fp32_path: Path, out_path: Path, *, model_type: str) -> dict[str, Any]:
    """Fuse attention and layer norms ahead of time, so the file needs no load-time fusion.

    BERT-like graphs go through onnxruntime.transformers' optimizer, which knows their
    attention pattern (measured on MiniLM-L6: 6 Attention, 12 SkipLayerNormalization, one
    EmbedLayerNormalization, 6 BiasGelu). Its Llama/T5 paths expect the library's own
    decoder exports (past key/values), not our masked classifier graphs, so those get ORT's
    own offline optimization at the EXTENDED level: CPU-independent fusions (layer norms,
    GELU, MatMul+Add) that stay portable across execution providers.
    """
    before = op_counts(fp32_path)
    if model_type == "bert":
        from onnxruntime.transformers.optimizer import optimize_model

        # num_heads/hidden_size 0: read them from the graph.
        with quiet_root_logger():
            optimized = optimize_model(
                str(fp32_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0
            )
        optimized.save_model_to_file(str(out_path))
        method = "onnxruntime.transformers.optimizer (bert)"
    else:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out_path)
        ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
        method = "onnxruntime offline optimization (EXTENDED)"
    after = op_counts(out_path)
    return {
        "method": method,
        "fused": fused_ops(out_path),
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
    }


# --- int8 -----------------------------------------------------------------------------------


# MLP output projections by architecture: BERT `layer.N/output/dense` (not the attention's
# `attention/output/dense`), Llama `mlp/down_proj`, T5 `DenseReluDense/wo`.
MLP_OUTPUT = re.compile(r"(layer\.\d+/output/dense/|/down_proj/|/DenseReluDense/wo/)")


def graph_nodes(path: Path) -> tuple[tuple[str, str], ...]:
    """(op type, name) of every node of an ONNX file, parsed once per version of the file:
    the int8 builders ask for them on every candidate they build, and parsing SmolLM2's
    540 MB graph takes over a second each time."""
    stat = path.stat()
    return _graph_nodes(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _graph_nodes(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    graph = onnx.load(path, load_external_data=False).graph
    return tuple((n.op_type, n.name) for n in graph.node)


def int8_exclusions(fp32_path: Path) -> list[str]:
    """MatMul nodes left in fp32 by int8 (dynamic and static): the MLP output projections.

    Their inputs (after GELU/SiLU) carry a few huge activations, and int8 here quantizes
    activations per tensor. Measured on the demo's SmolLM2 last-token model: int8 everywhere
    agreed with fp32 on 78% of SST-2 test labels (accuracy 80.7% -> 70.5%); keeping the 30
    down_proj MatMuls in fp32 raised that to 93%. On the demo's MiniLM: 98.3% -> 99.3%
    (99.3% -> 99.6% on 1,000 training texts), at about +30% latency against int8 everywhere
    (which failed the gate's 99% agreement).
    """
    return [
        name
        for op, name in graph_nodes(fp32_path)
        if op in ("MatMul", "Gemm") and MLP_OUTPUT.search(name + "/")
    ]


def head_exclusions(fp32_path: Path) -> list[str]:
    """Node names that keep the classification head in float in every int8 variant.

    The head (a Linear on the pooled vector, exported as Gemm) is hidden x labels: int8
    saves nothing there, yet it rounds the logits the decision rule reads. It is not a
    MatMul of the graph either, so the sensitivity search could never keep it in float:
    on the demo's SmolLM2 last-token model, all 210 MatMuls in float still agreed on only
    99.5% of the selection texts. onnxruntime's dynamic quantizer rewrites a Gemm `X` as
    MatMul `X_MatMul` plus an Add before it reads `nodes_to_exclude`, so both names are given.
    """
    gemms = [name for op, name in graph_nodes(fp32_path) if op == "Gemm" and name]
    return [name for gemm in gemms for name in (gemm, f"{gemm}_MatMul")]


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor on the root logger (hundreds
    for SmolLM2); keep them out of the CLI's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


# Dynamic int8 only where an integer kernel saves time: the products (MatMul, and the fused
# Attention that becomes QAttention). onnxruntime would also quantize embedding lookups
# (Gather, EmbedLayerNormalization) to uint8 per tensor: that saves only file size, and on
# SmolLM2's 49152 x 576 token table it is an error that no MatMul kept in float removes.
DYNAMIC_OPS = ("MatMul", "Attention")


# x86 CPU flags with an int8 dot product that does not saturate (onnxruntime's u8s8 kernels).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache  # read once: the int8 recipes ask for every candidate file they build
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return None if line is None else frozenset(line.partition(":")[2].split())


def int8_reduce_range(flags: frozenset[str] | None = None) -> bool:
    """7-bit weights where onnxruntime's u8s8 kernel can saturate: an x86 CPU with AVX2 but
    no VNNI multiplies with VPMADDUBSW, whose 16-bit sums overflow on 8-bit weights
    (onnxruntime's quantization guide advises reduce_range there). On a 2-core AVX2 AMD EPYC,
    SmolLM2 last-token int8 agreed with fp32 on 64.8% of 500 SST-2 test rows with 8-bit
    weights and 96.8% with 7-bit; MiniLM 98.2% and 99.0%. The gate runs on the exporting
    CPU, so the file it passes is the one that CPU's kernels answer correctly."""
    flags = cpu_flags() if flags is None else flags
    if flags is None or "avx2" not in flags:
        return False  # not x86 with AVX2 (ARM, older x86): kernels without the 16-bit sums
    return not flags & VNNI_FLAGS


def quantize_int8_dynamic(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """Dynamic int8 (weights ahead, activations per batch; no calibration data needed).
    Per-channel weight scales: MiniLM kept 98.3% of labels against 96.8% per-tensor.
    7-bit weights on CPUs whose int8 kernel saturates (int8_reduce_range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = int8_exclusions(fp32_path)
    reduce_range = int8_reduce_range()
    with quiet_root_logger():
        quantize_dynamic(
            fp32_path,
            out_path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            op_types_to_quantize=list(DYNAMIC_OPS),
            nodes_to_exclude=excluded + head_exclusions(fp32_path),
        )
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": True,
        "reduce_range": reduce_range,
        "op_types": list(DYNAMIC_OPS),
        "fp32_nodes": len(excluded),
    }


class _Calibration:
    """onnxruntime's CalibrationDataReader over tokenized texts, a batch at a time; the bar
    counts the texts onnxruntime has taken (it runs the model on each batch as it takes it)."""

    def __init__(self, texts: list[str], encode: Encode, batch_size: int, bar: Any) -> None:
        self._chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        self._next = 0
        self._encode = encode
        self._bar = bar

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._chunks):
            return None
        chunk = self._chunks[self._next]
        self._next += 1
        self._bar.update(len(chunk))
        return self._encode(chunk)


STATIC_OPS = ("MatMul", "Gemm")


def quantize_int8_static(
    fp32_path: Path,
    out_path: Path,
    *,
    calibration_texts: list[str],
    encode: Encode,
    batch_size: int = 16,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Static int8 in QDQ form, activation ranges calibrated (MinMax) on training texts.

    Only MatMul/Gemm are quantized: quantizing every operator (softmax, layer norm, adds)
    kept 36-62% of labels on tiny models and crashed on T5 (shared/STACK.md). Activations
    are uint8 asymmetric and weights int8 per channel, onnxruntime's advice for x86 with VNNI;
    the weights are 7-bit where the CPU's u8s8 kernel saturates (int8_reduce_range), as in
    dynamic int8. The Llama down_proj MatMuls stay fp32 for the same reason as there.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration_texts:
        raise ValueError("int8-static needs calibration texts (the training split is empty)")
    from tqdm.auto import tqdm

    excluded = int8_exclusions(fp32_path)
    reduce_range = int8_reduce_range()
    bar = tqdm(
        total=len(calibration_texts),
        desc="int8-static: calibrating",
        unit="text",
        disable=not show_progress,
    )
    with quiet_root_logger(), bar:
        quantize_static(
            fp32_path,
            out_path,
            _Calibration(calibration_texts, encode, batch_size, bar),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OPS),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded + head_exclusions(fp32_path),
            # MinMax keeps only a (min, max) per tensor and batch, so memory stays small.
            # (CalibMaxIntermediateOutputs would bound it, but onnxruntime 1.32 drops the
            # batches it folds: "No data is collected" when the count divides evenly.)
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "method": "static_qdq",
        "weight_type": "int8",
        "activation_type": "uint8",
        "per_channel": True,
        "reduce_range": reduce_range,
        "op_types": list(STATIC_OPS),
        "calibration": {"texts": len(calibration_texts), "method": "minmax"},
        "fp32_nodes": len(excluded),
    }


# --- fp16 -----------------------------------------------------------------------------------


def convert_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """fp16 weights and activations for GPUs, inputs/outputs kept as they are (int64 ids in,
    float32 logits out) so the server feeds it like any other variant. Constants beyond
    fp16's range (the -3.4e38 of attention masks) are clipped to +-65504 by the converter;
    whether that still gives finite logits is checked by the gate, not assumed."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))
    return {"method": "onnxruntime.transformers.float16", "keep_io_types": True}
