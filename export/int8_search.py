"""What the measured int8 recipes share: held-out texts, and how a candidate file is judged.

The recipes of export/int8_recipes.py choose settings (smoothing strength, the MatMuls kept
in float, reduce_range) by measuring candidate files against the fp32 graph. They measure on
the run's validation split and training texts only: the test split is the gate's, and a
choice tuned on it would make the gate's verdict meaningless.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.decision import DecisionRule
from service.runtime import make_session

# A feed builder: texts -> the graph's input arrays (the serving tokenizer path).
Encode = Callable[[list[str]], dict[str, np.ndarray]]

BATCH_SIZE = 32
# Agreement a candidate must reach on the selection texts: the gate's own 99%. A margin
# (99.5% was tried) made the MiniLM search keep 17 of 24 fused layers in float, which was
# slower than fp32; the gate still judges the chosen file on the test split.
SELECTION_AGREEMENT = 0.99


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchData:
    """Texts and helpers the measured recipes need; none of it comes from the test split."""

    model_type: str  # the backbone's config.model_type: "bert", "llama", "t5", ...
    calibration_texts: list[str]  # training texts: activation ranges for smoothing/static
    selection_texts: list[str]  # validation (then training) texts: candidates are judged here
    encode: Encode
    rule: DecisionRule
    threads: int = 1


def selection_sample(validation: list[str], train: list[str], rows: int, seed: int) -> list[str]:
    """The validation split first, topped up with seeded training texts to `rows`: 200
    validation rows tell 99.0% from 99.5% agreement too coarsely on their own."""
    texts = list(validation[:rows])
    if len(texts) < rows and train:
        rng = random.Random(seed + 1)  # not the calibration sample's seed
        texts += rng.sample(train, min(rows - len(texts), len(train)))
    return texts


def logits_of(model_path: Path, data: SearchData, texts: list[str]) -> np.ndarray:
    """(N, L) logits of a bare ONNX file, batched by length as the serving runtime does."""
    session = make_session(model_path, data.threads)
    names = {i.name for i in session.get_inputs()}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for first in range(0, len(order), BATCH_SIZE):
        idx = order[first : first + BATCH_SIZE]
        feeds = {k: v for k, v in data.encode([texts[i] for i in idx]).items() if k in names}
        (logits,) = session.run(["logits"], feeds)
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    assert out is not None, "no selection texts"
    return out


def agreement(logits: np.ndarray, reference: np.ndarray, rule: DecisionRule) -> float:
    """Share of rows whose answer (label set, by the run's rule) equals the reference's."""
    finite = np.isfinite(logits).all(axis=-1)
    ours = rule.decide(np.nan_to_num(logits)).chosen
    theirs = rule.decide(reference).chosen
    return float(((ours == theirs).all(axis=-1) & finite).mean())
