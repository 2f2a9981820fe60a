"""Run one exported model directory with onnxruntime: texts in, predictions out.

The same code scores the test split at export time and serves requests, so the accuracy in a
manifest is the accuracy of the serving path (tokenizer settings included), not of torch; and
that code is `core`'s preprocessing and decision rule, which training evaluated with too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core import devices
from core.manifest import MODEL_NAME, TOKENIZER_NAME, Manifest, TaskRule, verify_files
from core.preprocessing import TextEncoder
from service.prefix_cache import PrefixCache


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str  # the answer: the most probable label, or the out-of-scope label if rejected
    scores: dict[str, float]  # probability per label name (softmax, or sigmoid if multi-label)
    # Every label predicted: [label] for single-label models; for multi-label models each
    # label whose probability clears its threshold (possibly none).
    labels: tuple[str, ...] = ()
    rejected: bool = False  # below the out-of-scope rejection threshold


def make_session(
    model_path: Path, threads: int, *, spinning: bool = False, device: str = "cpu"
) -> ort.InferenceSession:
    """A session on `device` (cpu, cuda or auto); a CUDA request that cannot be met raises
    core.devices.DeviceError instead of running on the CPU."""
    device = devices.resolve(device)
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
    session = ort.InferenceSession(str(model_path), options, providers=devices.providers(device))
    devices.check_session(session, device, str(model_path))
    return session


class OnnxClassifier:
    """A model directory loaded for inference: the manifest's preprocessing turns texts into
    ids and its decision rule turns logits into answers, the same `core` code that training
    evaluated with. Thread-safe for `predict` (ORT sessions and the encoder only read)."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        threads: int = 1,
        verify: bool = True,
        spinning: bool = False,
        device: str = "cpu",
        prefix_cache: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if verify:
            verify_files(self.model_dir, self.manifest)
        # A prompted label-word model with a cached prefix runs the graph with past inputs
        # instead of the plain one (one session either way); `prefix_cache=False` runs the
        # plain graph, which the export gate judged.
        cached = prefix_cache and bool(self.manifest.prefix_cache)
        graph = self.manifest.prefix_cache["graph"] if cached else MODEL_NAME
        self.session = make_session(
            self.model_dir / graph, threads, spinning=spinning, device=device
        )
        # Where it really runs: the session, not the setting, is the truth (core/devices.py).
        self.device = "cuda" if self.session.get_providers()[0] == devices.CUDA_PROVIDER else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.encoder = TextEncoder.from_file(
            self.model_dir / TOKENIZER_NAME, self.manifest.preprocessing
        )
        self.decision = self.manifest.decision
        # Multi-task models (core/manifest.py's TaskRule): name -> prompt, columns, rule.
        self.tasks: dict[str, TaskRule] = {t.name: t for t in self.manifest.tasks}
        self.prefix = (
            PrefixCache(self.session, self.encoder, self.model_dir / TOKENIZER_NAME)
            if cached
            else None
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def _feeds(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        feeds = self.encoder.pad(ids)
        # Feed exactly what the graph declares (some BERT exports want token_type_ids).
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's input arrays for `texts`, right-padded to the longest."""
        return self._feeds(self.encoder.encode(texts).ids)

    def _run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """(B, num_labels) logits of token ids (full prompts); a cached prefix is skipped."""
        if self.prefix is not None:
            return self.prefix.logits(ids, len(self.labels))
        (logits,) = self.session.run(["logits"], self._feeds(ids))
        return logits

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(B, num_labels) float32 logits."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._run(self.encoder.encode(texts).ids)

    def task(self, name: str | None) -> TaskRule | None:
        """The task `name` of a multi-task model (None for a model of one task); raises
        ValueError naming the tasks when it is missing or unknown, or given to a model of
        one task."""
        if not self.tasks:
            if name is not None:
                raise ValueError(f"{self.name} serves one task: it takes no task ({name!r})")
            return None
        if name not in self.tasks:
            raise ValueError(f"{self.name} serves tasks {list(self.tasks)}: name one, got {name!r}")
        return self.tasks[name]

    def predict(self, texts: Sequence[str], task: str | None = None) -> list[Prediction]:
        """Answers for `texts`; a multi-task model needs the `task` they belong to."""
        rule = self.task(task)
        if rule is None:
            logits, decision = self.logits(texts), self.decision
        else:
            logits, decision = rule.select(self.logits(rule.prompts(texts))), rule.decision
        decisions = decision.decide(logits)
        labels = decision.labels
        return [
            Prediction(
                label=labels[int(best)],
                scores={name: float(p) for name, p in zip(labels, row, strict=True)},
                labels=tuple(labels[i] for i in np.flatnonzero(chosen)),
                rejected=bool(rejected),
            )
            for best, row, chosen, rejected in zip(
                decisions.label_ids,
                decisions.probabilities,
                decisions.chosen,
                decisions.rejected,
                strict=True,
            )
        ]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after the prompt template, before truncation."""
        return self.encoder.count_tokens(texts)

    def logits_bucketed(self, texts: Sequence[str], slack: float = 1.15) -> np.ndarray:
        """(B, num_labels) logits for a server batch; see `score_batch`."""
        return self.score_batch(texts, slack)[0]

    def score_batch(
        self, texts: Sequence[str], slack: float = 1.15
    ) -> tuple[np.ndarray, np.ndarray]:
        """((B, num_labels) logits, (B,) bool: the text was cut to max_length) for a server
        batch. Texts are sorted by token count and cut into groups whose padded tokens stay
        under `slack` x their real tokens: one long text in a batch of short ones would
        otherwise make every row as long as it (attention cost grows with the square of that
        length). Similar lengths make one ORT call. Small batches are split by the same rule:
        on one CPU thread a padded token costs about what a real one does, and a call more
        costs less than the padding it saves (`bench/batch_grouping.py`)."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), np.zeros(0, dtype=bool)
        encoded = self.encoder.encode(texts)
        lengths = np.fromiter((len(ids) for ids in encoded.ids), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        start = 0
        while start < len(order):
            end, total = start + 1, int(lengths[order[start]])
            while end < len(order):
                longest = int(lengths[order[end]])  # sorted: the next one is the longest
                if longest * (end - start + 1) > slack * (total + longest):
                    break
                total += longest
                end += 1
            idx = order[start:end]
            out[idx] = self._run([encoded.ids[i] for i in idx])
            start = end
        return out, encoded.truncated

    def logits_batched(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits for many texts, batched so memory stays flat; batches are formed from texts
        sorted by length so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.logits([texts[i] for i in idx])
        return out
