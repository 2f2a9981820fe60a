"""OnnxClassifier on a fake model directory: scores, order, padding, truncation, integrity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import make_tiny_model_dir

from core.manifest import MANIFEST_NAME, MODEL_NAME, ManifestError
from service.runtime import OnnxClassifier

LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), labels=LABELS, max_length=8)


@pytest.fixture(scope="module")
def classifier(model_dir: Path) -> OnnxClassifier:
    return OnnxClassifier(model_dir)


def test_scores_are_probabilities_over_the_labels(classifier: OnnxClassifier) -> None:
    predictions = classifier.predict(["a good movie", "awful plot", "zzz unknown words"])
    assert len(predictions) == 3
    for p in predictions:
        assert list(p.scores) == list(LABELS)
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 <= s <= 1.0 for s in p.scores.values())
        assert p.label == max(p.scores, key=p.scores.__getitem__)


def test_batch_keeps_input_order(classifier: OnnxClassifier) -> None:
    texts = ["good", "bad movie", "the plot was boring", "loved it", "terrible"]
    alone = [classifier.logits([t])[0] for t in texts]
    batched = classifier.logits(texts)
    np.testing.assert_allclose(batched, np.stack(alone), atol=1e-5)
    # The different texts really give different logits, so the check above sees a swap.
    assert len({tuple(np.round(row, 4)) for row in batched}) == len(texts)


def test_padding_does_not_change_logits(classifier: OnnxClassifier) -> None:
    short = "good"
    longer = "the actors were great but the story was boring"
    encoded = classifier.encode([short, longer])
    assert encoded["attention_mask"][0].sum() < encoded["attention_mask"].shape[1]  # padded
    alone = classifier.logits([short])[0]
    in_batch = classifier.logits([short, longer])[0]
    np.testing.assert_allclose(in_batch, alone, atol=1e-5)


def test_long_texts_are_truncated_to_max_length(classifier: OnnxClassifier) -> None:
    words = ["good", "bad", "movie", "film", "plot", "story", "fun", "awful", "the", "a", "it"]
    long_text = " ".join(words * 3)
    encoded = classifier.encode([long_text])
    assert encoded["input_ids"].shape == (1, 8)  # manifest max_length
    # Right truncation: the model sees only the first 8 words.
    np.testing.assert_allclose(
        classifier.logits([long_text]), classifier.logits([" ".join(words[:8])]), atol=1e-5
    )


def test_empty_batch(classifier: OnnxClassifier) -> None:
    assert classifier.predict([]) == []
    assert classifier.logits([]).shape == (0, len(LABELS))


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "m")
    with open(model_dir / MODEL_NAME, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=MODEL_NAME) as info:
        OnnxClassifier(model_dir)
    assert "re-export" in str(info.value)


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "m")
    (model_dir / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json not found.*smallcls export"):
        OnnxClassifier(model_dir)


def test_fake_dirs_with_other_seeds_differ(tmp_path: Path) -> None:
    # Service tests tell two loaded models apart by their outputs.
    a = OnnxClassifier(make_tiny_model_dir(tmp_path / "a", seed=0))
    b = OnnxClassifier(make_tiny_model_dir(tmp_path / "b", seed=1))
    assert not np.allclose(a.logits(["good movie"]), b.logits(["good movie"]))
