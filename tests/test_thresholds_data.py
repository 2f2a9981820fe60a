"""Pure logic of the task types: thresholds on synthetic scores with a known answer, multi-label and
benchmark data loading, head+tail truncation, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.data import (
    BENCHMARKS,
    DatasetError,
    benchmark_paths,
    default_datasets_dir,
    load_dataset,
    read_split,
)
from core.decision import choose_labels
from core.metrics import multilabel_metrics, oos_metrics
from training.thresholds import (
    reject_below,
    tune_label_thresholds,
    tune_rejection_threshold,
)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_label_thresholds_recover_a_known_separating_point():
    """Label 0: positives score 0.3-0.4, negatives 0.0-0.2, so any threshold in (0.2, 0.3]
    is perfect and the tie goes to the one nearest 0.5: 0.30. Label 1: positives above 0.8,
    negatives up to 0.7 -> the perfect range (0.7, 0.8], nearest 0.5 is 0.71. Label 2 has no
    positive row: it keeps the default."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.zeros((n, 3), dtype=int)
    y[:80, 0] = 1
    y[50:120, 1] = 1
    probs = np.zeros((n, 3))
    probs[:, 0] = np.where(y[:, 0], rng.uniform(0.3, 0.4, n), rng.uniform(0.0, 0.2, n))
    probs[:, 1] = np.where(y[:, 1], rng.uniform(0.8, 1.0, n), rng.uniform(0.0, 0.7, n))
    probs[:, 2] = rng.uniform(0, 1, n)
    probs[0, 1] = 0.7  # a negative exactly at the top of the negatives' range
    probs[50, 1] = 0.8  # a positive exactly at the bottom of the positives'
    probs[0, 0], probs[80, 0] = 0.3, 0.2
    thresholds = tune_label_thresholds(probs, y)
    assert thresholds == pytest.approx([0.30, 0.71, 0.5])
    pred = choose_labels(probs, thresholds).astype(int)
    assert (pred[:, :2] == y[:, :2]).all()


def test_rejection_threshold_separates_confident_in_scope_from_oos():
    """In-scope rows are right with top probability >= 0.6; out-of-scope rows peak at 0.449
    at most, on a wrong intent. Rejection is `top < t`, so the lowest threshold that rejects
    every oos row and no in-scope row is 0.45."""
    rng = np.random.default_rng(1)
    oos = 4
    probs = np.zeros((300, 5))
    y = np.zeros(300, dtype=int)
    for i in range(250):
        y[i] = i % 4
        probs[i, i % 4] = rng.uniform(0.6, 1.0)
    for i in range(250, 300):
        y[i] = oos
        probs[i, i % 4] = [0.30, 0.35, 0.40, 0.449][i % 4]
    t = tune_rejection_threshold(probs, y, oos)
    assert t == pytest.approx(0.45)
    m = oos_metrics(y, reject_below(probs, t, oos), oos)
    assert m["in_scope_accuracy"] == 1.0 and m["oos_recall"] == 1.0


def test_oos_metrics_follow_larson():
    y_true = [0, 1, 2, 2, 2]  # 2 = oos
    y_pred = [0, 2, 2, 1, 2]  # an in-scope row rejected counts against in-scope accuracy
    m = oos_metrics(y_true, y_pred, 2)
    assert m["in_scope_accuracy"] == 0.5
    assert m["oos_recall"] == pytest.approx(2 / 3)
    assert m["oos_precision"] == pytest.approx(2 / 3)


def test_multilabel_metrics_micro_macro_exact():
    y = np.array([[1, 0], [1, 1], [0, 0]])
    p = np.array([[1, 0], [1, 0], [0, 0]])
    m = multilabel_metrics(y, p, ["a", "b"])
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert m["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_multi_label_rows_load_and_may_be_empty(tmp_path):
    rows = [
        {"text": "yay", "labels": ["joy", "love"]},
        {"text": "meh", "labels": []},
        {"text": "grr", "labels": ["anger"]},
    ]
    train = _write(tmp_path / "train.jsonl", rows * 10)
    test = _write(tmp_path / "test.jsonl", rows)
    dataset = load_dataset(train, test)
    assert dataset.problem_type == "multi_label"
    assert dataset.label_names == ["anger", "joy", "love"]
    assert dataset.label_matrix(dataset.test).tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(DatasetError, match="multi-label"):
        dataset.label_ids(dataset.test)


def test_mixed_single_and_multi_label_rows_are_refused(tmp_path):
    path = _write(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "labels": []}])
    with pytest.raises(DatasetError, match=r"a\.jsonl:2: mixes"):
        read_split(path)


@pytest.mark.skipif(not default_datasets_dir().is_dir(), reason="../shared/datasets absent")
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_dataset_is_readable_by_path(name):
    paths = benchmark_paths(name)
    test = read_split(paths["test"])
    assert len(test) >= 500
    assert test.multi_label == (BENCHMARKS[name].problem_type == "multi_label")
    if paths["validation"]:
        assert len(read_split(paths["validation"])) >= 2000
    if name == "clinc150":
        assert "oos" in test.label_names() and len(test.label_names()) == 151
    if name == "goemotions":
        assert len(test.label_names()) == 28


def test_head_tail_keeps_start_and_end():
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from core.preprocessing import Preprocessing, TextEncoder
    from tests.tiny_models import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(make_tiny(Path(tmp) / "b", "bert"))
    text = " ".join(["the"] * 5 + ["good"] * 90 + ["bad"] * 5)
    pre = Preprocessing(max_length=22, truncation="head_tail")  # 20 text tokens + 2 specials
    short, cut = TextEncoder(tok.backend_tokenizer, pre).prompts([text, "short text"])
    assert short[1] == "short text" and cut.tolist() == [True, False]
    kept = short[0].split()
    assert kept[:5] == ["the"] * 5 and kept[-5:] == ["bad"] * 5
    assert len(tok.encode(short[0], add_special_tokens=False)) <= 21
