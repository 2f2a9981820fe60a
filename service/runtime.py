"""Run one exported model directory with onnxruntime: texts in, predictions out.

The same code scores the test split at export time and serves requests, so the accuracy in a
manifest is the accuracy of the serving path (tokenizer settings included), not of torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from smallcls.manifest import (
    MODEL_NAME,
    TOKENIZER_NAME,
    Manifest,
    fill_template,
    verify_files,
)


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    scores: dict[str, float]  # softmax probability per label name


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def make_session(model_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # A fixed thread count: ORT's default (all cores, spinning) fights the server's other
    # workers and makes latency noisy on a 2-core machine.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """A model directory loaded for inference. Thread-safe for `predict` (ORT sessions are)."""

    def __init__(self, model_dir: Path | str, *, threads: int = 1, verify: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)
        self.session = make_session(self.model_dir / MODEL_NAME, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = self._load_tokenizer()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def _load_tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(self.model_dir / TOKENIZER_NAME))
        m = self.manifest
        tokenizer.enable_truncation(m.max_length, direction=m.truncation_side)
        # Right padding: every head finds its tokens through attention_mask, which the
        # graphs were traced with.
        tokenizer.enable_padding(direction="right", pad_id=m.pad_token_id, pad_token=m.pad_token)
        return tokenizer

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        prompts = fill_template(self.manifest.prompt_template, texts)
        encodings = self.tokenizer.encode_batch(prompts)
        input_ids = np.asarray([e.ids for e in encodings], dtype=np.int64)  # (B, T)
        attention_mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        # Feed exactly what the graph declares (some BERT exports want token_type_ids).
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(B, num_labels) float32 logits."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        (logits,) = self.session.run(["logits"], self.encode(texts))
        return logits

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probs = softmax(self.logits(texts).astype(np.float64))
        labels = self.labels
        return [
            Prediction(
                label=labels[int(row.argmax())],
                scores={name: float(p) for name, p in zip(labels, row, strict=True)},
            )
            for row in probs
        ]

    def logits_batched(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits for many texts, batched so memory stays flat; batches are formed from texts
        sorted by length so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.logits([texts[i] for i in idx])
        return out
