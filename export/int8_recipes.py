"""int8 variants whose settings are measured, not fixed: fused, smoothed, weight-only, mixed.

- `int8-fused`: the graph is fused first (export/variants.py `optimize_fp32`: Attention,
  SkipLayerNormalization, BiasGelu for BERT), then quantized dynamically, so the fused
  operators get int8 kernels (QAttention, DynamicQuantizeMatMul), as onnxruntime's
  transformer-optimization guide advises; reduce_range and smoothing of the fused graph are
  chosen on the selection texts, and layers the answers are sensitive to stay in float
  (export/sensitivity.py) if that is still not enough.
- `int8-smooth`: SmoothQuant-style smoothing (export/smoothing.py) with alpha chosen among
  ALPHAS on the selection texts, then dynamic int8 of every MatMul.
- `int8-w8`: weight-only int8 (MatMulNBits, bits=8): activations stay float (or are
  quantized per block of 32 values with accuracy_level 4), so outliers cost little.
- `int8-mixed`: dynamic int8 of the unfused graph, keeping in float the fewest MatMuls that
  keep the selection texts' answers (export/sensitivity.py).

Every choice is measured on validation and training texts (export/int8_search.py); the test
split is left to the accuracy gate, which judges each file like every other variant.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx

from export import sensitivity, smoothing
from export.int8_search import SELECTION_AGREEMENT, SearchData, agreement, logits_of
from export.variants import int8_reduce_range

log = logging.getLogger(__name__)

RECIPES = ("int8-fused", "int8-smooth", "int8-w8", "int8-mixed")
ALPHAS = (0.5, 0.65, 0.8)
# Measured on this 2-core CPU with bench/quantization.py (docs/quantization.md): per-tensor
# weight scales were faster but lost 1-2 accuracy points on MiniLM; per-channel kept the
# answers. 7-bit weights (reduce_range) ran at the same speed; int8-fused tries both, the
# others take them where the CPU's int8 kernel saturates (export/variants.py).
PER_CHANNEL = True
# MatMulNBits: 32 values per scale (the finest block the CPU kernels take); accuracy level 4
# quantizes activations to int8 per block and runs integer kernels, 0 dequantizes to fp32.
W8_BLOCK_SIZE = 32
W8_ACCURACY_LEVEL = 4


def dynamic_int8(
    source: Path,
    target: Path,
    excluded: list[str],
    *,
    per_channel: bool = PER_CHANNEL,
    reduce_range: bool | None = None,  # None: as the CPU needs (export/variants.py)
    only: list[str] | None = None,
) -> None:
    """onnxruntime's dynamic int8, int8 weights, `excluded` node names left in float (or
    only the nodes `only` quantized)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.variants import DYNAMIC_OPS, head_exclusions, quiet_root_logger

    if reduce_range is None:
        reduce_range = int8_reduce_range()

    with quiet_root_logger():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=list(excluded) + head_exclusions(source),
            nodes_to_quantize=only,
            op_types_to_quantize=list(DYNAMIC_OPS),
            # Fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape
            # inference, so the quantizer must be told their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def searched_dynamic(source: Path, target: Path, data: SearchData, **kw: Any) -> dict[str, Any]:
    """Dynamic int8 of `source` with the fewest sensitive layers kept in float: none if
    that already agrees on the selection texts (no ranking needed then)."""
    reference = logits_of(source, data, data.selection_texts)
    dynamic_int8(source, target, [], **kw)
    agreed = agreement(logits_of(target, data, data.selection_texts), reference, data.rule)
    head = {"method": "dynamic", "weight_type": "int8", **kw}
    if agreed >= SELECTION_AGREEMENT:
        return {**head, "fp32_nodes": 0, "excluded": [], "selection_agreement": round(agreed, 4)}
    layers = sensitivity.weighted_layers(onnx.load(str(source), load_external_data=False))
    if len(layers) <= sensitivity.END_TO_END_MAX_LAYERS:
        ranked_by = "end_to_end"
        scratch = target.with_name("one-layer.onnx")
        ranking = sensitivity.rank_end_to_end(
            source, data, lambda s, t, only: dynamic_int8(s, t, [], only=only, **kw), scratch
        )
        scratch.unlink(missing_ok=True)
    else:
        ranked_by = "local_error"
        ranking = sensitivity.rank_layers(source, data, **kw)
    found = sensitivity.fewest_in_float(
        source,
        target,
        data,
        lambda s, t, ex: dynamic_int8(s, t, ex, **kw),
        reference_logits=reference,
        ranking=ranking,
    )
    if found.get("selection_agreement", 0.0) < agreed:
        # The search stops within a few layers of its target and can end on a set that
        # agrees less than none in float at all: then none in float is the better file.
        dynamic_int8(source, target, [], **kw)
        found = {"fp32_nodes": 0, "excluded": [], "selection_agreement": agreed}
    # Decided on the exact figures above; recorded to 4 places like every figure beside it.
    found["selection_agreement"] = round(found["selection_agreement"], 4)
    return {**head, "ranked_by": ranked_by, **found}


def build_fused(source: Path, target: Path, data: SearchData) -> dict[str, Any]:
    """Fuse, then dynamic int8 of the fused graph, with the first candidate setting that
    agrees on the selection texts (else the one that agrees most): reduce_range off or on
    and, for graphs small enough that a
    build takes a second, SmoothQuant smoothing of the fused graph's inputs at each alpha
    (BERT's LayerNorm output is also the residual, so s cannot fold into it; one Mul per
    input carries it, in front of Attention and the MLP). Short of the target, the fewest
    sensitive layers stay in float."""
    from export.variants import optimize_fp32

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fused = Path(tmp) / "fused.onnx"
        optimized = optimize_fp32(source, fused, model_type=data.model_type)
        reference = logits_of(fused, data, data.selection_texts)
        small = len(sensitivity.weighted_layers(onnx.load(str(fused)))) <= (
            sensitivity.END_TO_END_MAX_LAYERS
        )
        candidates = [(None, False), (None, True)]
        candidates += [(alpha, False) for alpha in ALPHAS] if small else []
        tried: dict[str, float] = {}
        best: tuple[float, float | None, bool, dict[str, Any]] | None = None
        for alpha, reduce_range in candidates:
            graph, how = fused, {}
            if alpha is not None:
                graph = Path(tmp) / f"smoothed-{alpha}.onnx"
                how = smoothing.smooth(fused, graph, data, alpha)
            dynamic_int8(graph, target, [], per_channel=True, reduce_range=reduce_range)
            logits = logits_of(target, data, data.selection_texts)
            agreed = agreement(logits, reference, data.rule)
            tried[f"alpha={alpha} reduce_range={reduce_range}".lower()] = round(agreed, 4)
            log.info("int8-fused alpha %s reduce_range %s: %.4f", alpha, reduce_range, agreed)
            if best is None or agreed > best[0]:  # a tie keeps the simpler, earlier one
                best = (agreed, alpha, reduce_range, how)
            if agreed >= SELECTION_AGREEMENT:
                break  # candidates run fastest first: smoothing adds a Mul per input
        assert best is not None
        _, alpha, reduce_range, how = best
        graph = fused if alpha is None else Path(tmp) / f"smoothed-{alpha}.onnx"
        found = searched_dynamic(graph, target, data, per_channel=True, reduce_range=reduce_range)
    return {
        **found,
        "smoothing": how,
        "candidates_tried": tried,
        "fused_first": optimized["method"],
        "fused": optimized["fused"],
    }


def build_mixed(source: Path, target: Path, data: SearchData) -> dict[str, Any]:
    return searched_dynamic(
        source, target, data, per_channel=PER_CHANNEL, reduce_range=int8_reduce_range()
    )


def build_smooth(
    source: Path, target: Path, data: SearchData, alphas: tuple[float, ...] = ALPHAS
) -> dict[str, Any]:
    """Smooth with each alpha and quantize everything; keep the alpha whose answers agree
    most with fp32. If even that is short of the target, the fewest sensitive layers of the
    smoothed graph stay in float (as in int8-mixed), usually fewer than without smoothing."""
    reference = logits_of(source, data, data.selection_texts)
    tried: dict[str, float] = {}
    best: tuple[float, float, dict[str, Any]] | None = None
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        smoothed, kept = Path(tmp) / "smoothed.onnx", Path(tmp) / "best-smoothed.onnx"
        for alpha in alphas:
            how = smoothing.smooth(source, smoothed, data, alpha)
            dynamic_int8(smoothed, target, [], per_channel=PER_CHANNEL)
            logits = logits_of(target, data, data.selection_texts)
            agreed = agreement(logits, reference, data.rule)
            tried[str(alpha)] = round(agreed, 4)
            log.info("int8-smooth alpha %.2f: selection agreement %.4f", alpha, agreed)
            if best is None or agreed > best[0]:
                best = (agreed, alpha, how)
                smoothed.replace(kept)
        assert best is not None, "no alpha to try"
        found = searched_dynamic(
            kept, target, data, per_channel=PER_CHANNEL, reduce_range=int8_reduce_range()
        )
    return {
        **found,
        "method": "smoothquant+dynamic",
        "smoothing": best[2],
        "alphas_tried": tried,
        "calibration": {"texts": min(len(data.calibration_texts), smoothing.CALIBRATION_ROWS)},
    }


def build_w8(
    source: Path,
    target: Path,
    data: SearchData | None = None,
    *,
    accuracy_level: int = W8_ACCURACY_LEVEL,
    block_size: int = W8_BLOCK_SIZE,
) -> dict[str, Any]:
    """Weight-only int8 with onnxruntime's MatMulNBitsQuantizer (symmetric, per block)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from export.variants import quiet_root_logger

    with quiet_root_logger():
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(source)),
            bits=8,
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=accuracy_level,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return {
        "method": "weight_only",
        "op": "MatMulNBits",
        "bits": 8,
        "block_size": block_size,
        "accuracy_level": accuracy_level,
    }


def build(variant: str, source: Path, target: Path, data: SearchData) -> dict[str, Any]:
    """Write `target` (one of RECIPES) from the fp32 graph `source`; how it was made."""
    builders = {
        "int8-fused": build_fused,
        "int8-smooth": build_smooth,
        "int8-w8": build_w8,
        "int8-mixed": build_mixed,
    }
    return builders[variant](source, target, data)
