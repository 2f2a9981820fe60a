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

from core.manifest import (
    MODEL_NAME,
    TOKENIZER_NAME,
    Manifest,
    fill_template,
    verify_files,
)


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str  # the most probable label
    scores: dict[str, float]  # probability per label name (softmax, or sigmoid if multi-label)
    # Every label predicted: [label] for single-label models; for multi-label models each
    # label whose probability clears its threshold (possibly none).
    labels: tuple[str, ...] = ()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows for large |logit|.
    out = np.empty_like(logits)
    pos = logits >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-logits[pos]))
    exp = np.exp(logits[~pos])
    out[~pos] = exp / (1.0 + exp)
    return out


def probabilities(logits: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(B, L) probabilities: softmax for single-label models, one sigmoid per label for
    multi-label models (labels are independent there)."""
    logits = logits.astype(np.float64)
    return sigmoid(logits) if manifest.problem_type == "multi_label" else softmax(logits)


def default_thresholds(manifest: Manifest) -> list[float]:
    if manifest.thresholds is not None:
        return list(manifest.thresholds)
    return [0.5] * len(manifest.labels)


def make_session(model_path: Path, threads: int, *, spinning: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # A fixed thread count: ORT's default (all cores, spinning) fights the server's other
    # workers and makes latency noisy on a 2-core machine.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        # Idle intra-op threads otherwise spin for a while before sleeping: on a 2-core
        # server that is CPU taken from the HTTP loop and from other workers. Measured with
        # bench/peers.py under load: about 2x the throughput without spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """A model directory loaded for inference. Thread-safe for `predict` (ORT sessions are)."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        threads: int = 1,
        verify: bool = True,
        spinning: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)
        self.session = make_session(self.model_dir / MODEL_NAME, threads, spinning=spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = self._load_tokenizer()
        # Unpadded and untruncated copies: lengths for `truncate: false` and for bucketing.
        self._counter = Tokenizer.from_file(str(self.model_dir / TOKENIZER_NAME))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._unpadded = Tokenizer.from_file(str(self.model_dir / TOKENIZER_NAME))
        self._unpadded.enable_truncation(
            self.manifest.max_length, direction=self.manifest.truncation_side
        )
        self._unpadded.no_padding()

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
        probs = probabilities(self.logits(texts), self.manifest)
        labels = self.labels
        multi = self.manifest.problem_type == "multi_label"
        thresholds = np.asarray(default_thresholds(self.manifest))
        return [
            Prediction(
                label=labels[int(row.argmax())],
                scores={name: float(p) for name, p in zip(labels, row, strict=True)},
                labels=(
                    tuple(labels[i] for i in np.flatnonzero(row >= thresholds))
                    if multi
                    else (labels[int(row.argmax())],)
                ),
            )
            for row in probs
        ]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after the prompt template, before truncation."""
        prompts = fill_template(self.manifest.prompt_template, texts)
        return [len(e.ids) for e in self._counter.encode_batch(prompts)]

    def logits_bucketed(self, texts: Sequence[str], slack: float = 1.3) -> np.ndarray:
        """(B, num_labels) logits for a server batch; see `score_batch`."""
        return self.score_batch(texts, slack)[0]

    def score_batch(
        self, texts: Sequence[str], slack: float = 1.3
    ) -> tuple[np.ndarray, np.ndarray]:
        """((B, num_labels) logits, (B,) bool: the text was cut to max_length) for a server
        batch. Texts are sorted by token count and cut into groups whose padding stays under
        `slack` x their real tokens: one long text in a batch of short ones would otherwise
        make every row as long as it (attention cost grows with the square of that length).
        Similar lengths make one ORT call."""
        truncated = np.zeros(len(texts), dtype=bool)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), truncated
        prompts = fill_template(self.manifest.prompt_template, texts)
        encodings = self._unpadded.encode_batch(prompts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        truncated[:] = [bool(e.overflowing) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        start = 0
        while start < len(order):
            end, total = start + 1, int(lengths[order[start]])
            while end < len(order):
                longest = int(lengths[order[end]])  # sorted: the next one is the longest
                if longest * (end - start + 1) > slack * (total + longest) and end - start >= 4:
                    break
                total += longest
                end += 1
            idx = order[start:end]
            out[idx] = self._run_group([encodings[i].ids for i in idx])
            start = end
        return out, truncated

    def _run_group(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.manifest.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)  # (B, T)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        (logits,) = self.session.run(["logits"], feeds)
        return logits

    def logits_batched(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits for many texts, batched so memory stays flat; batches are formed from texts
        sorted by length so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.logits([texts[i] for i in idx])
        return out
