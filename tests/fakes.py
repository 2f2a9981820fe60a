"""A real, tiny model directory built without torch: the dummy backend for runtime and API tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers

from core.decision import DecisionRule
from core.manifest import MODEL_NAME, TOKENIZER_NAME, Manifest, sha256_of
from core.preprocessing import Preprocessing

PAD, UNK = "[PAD]", "[UNK]"
# Enough words for sentiment-ish test texts; anything else maps to [UNK].
WORDS = [
    *("the", "a", "an", "is", "was", "this", "that", "it", "and", "but", "not", "very"),
    *("movie", "film", "plot", "actors", "story"),
    *("good", "great", "fun", "loved", "wonderful"),
    *("bad", "awful", "boring", "hated", "terrible"),
]
EMBED_DIM = 8


def _tokenizer() -> Tokenizer:
    vocab = {PAD: 0, UNK: 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def _graph(vocab_size: int, num_labels: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Embedding → masked mean over T → linear head: the same I/O contract as exported models."""
    emb = rng.normal(size=(vocab_size, EMBED_DIM)).astype(np.float32)
    weight = rng.normal(size=(EMBED_DIM, num_labels)).astype(np.float32)
    bias = rng.normal(size=(num_labels,)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(emb, "embedding"),  # (V, D)
        numpy_helper.from_array(weight, "head_weight"),  # (D, L)
        numpy_helper.from_array(bias, "head_bias"),  # (L,)
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"]),  # (B, T, D)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),  # (B, T)
        helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask3"]),  # (B, T, 1)
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),  # (B, T, D)
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["summed"], keepdims=0),  # (B, D)
        helper.make_node("ReduceSum", ["mask3", "axis_1"], ["count"], keepdims=0),  # (B, 1)
        # An all-padding row would divide 0 by 0; the server rejects empty texts, but keep
        # the fake free of NaN anyway.
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),  # (B, D)
        helper.make_node("MatMul", ["pooled", "head_weight"], ["projected"]),  # (B, L)
        helper.make_node("Add", ["projected", "head_bias"], ["logits"]),  # (B, L)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mean_pool_classifier",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime the project supports
    onnx.checker.check_model(model)
    return model


def make_tiny_model_dir(
    path: Path,
    *,
    name: str = "tiny",
    labels: Sequence[str] = ("negative", "positive"),
    max_length: int = 16,
    seed: int = 0,
    problem_type: str = "single_label",
    thresholds: Sequence[float] | None = None,
    oos_label: str | None = None,
    rejection_threshold: float | None = None,
    truncation: str = "head",
) -> Path:
    """Write model.onnx, tokenizer.json and manifest.json into `path` (created) and return it.
    Different seeds give different weights, so two dirs give distinguishable predictions."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    tokenizer.save(str(path / TOKENIZER_NAME))
    rng = np.random.default_rng(seed)
    onnx.save(_graph(tokenizer.get_vocab_size(), len(labels), rng), str(path / MODEL_NAME))
    Manifest(
        name=name,
        family="encoder",
        head="mean_pool",
        base_model="tests/fakes",
        labels=list(labels),
        precision="fp32",
        preprocessing=Preprocessing(
            max_length=max_length,
            truncation=truncation,  # type: ignore[arg-type]  # validated by Preprocessing
            pad_token_id=0,
            pad_token=PAD,
        ),
        decision=DecisionRule(
            labels=list(labels),
            problem_type=problem_type,  # type: ignore[arg-type]  # validated by DecisionRule
            thresholds=list(thresholds) if thresholds is not None else None,
            oos_label=oos_label,
            rejection_threshold=rejection_threshold,
        ),
        source_run="tests/fakes.py",
        files={f: sha256_of(path / f) for f in (MODEL_NAME, TOKENIZER_NAME)},
    ).write(path)
    return path
