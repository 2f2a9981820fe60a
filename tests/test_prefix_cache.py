"""A prompted label-word model with a cached prompt prefix answers every test row as the
uncached model does, through the runtime and the served API."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from core.config import TrainConfig
from core.manifest import Manifest
from tests.conftest import app_client
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice


@pytest.fixture(scope="module")
def cached_model(tiny_dirs, tmp_path_factory):
    """(run dir, model dir with a prefix cache): a tiny Llama, 2-shot label words, trained."""
    from export.onnx_export import export_run
    from export.prefix_cache import add_to_run_export
    from training.train import train

    tmp = tmp_path_factory.mktemp("prefix")
    config = TrainConfig(
        name="fewshot",
        family="causal_lm",
        head="label_words",
        base_model=str(tiny_dirs["llama"]),
        train_path=str(sst2_slice(SST2_TRAIN, tmp / "train.jsonl", 120)),
        test_path=str(sst2_slice(SST2_TEST, tmp / "test.jsonl", 60)),
        prompt_template="Review: {text}\nSentiment:",
        label_words={"negative": " bad", "positive": " good"},
        few_shot_k=2,
        # 160 tokens: the examples fit, yet a long review cuts into them (tail truncation).
        max_length=160,
        learning_rate=3e-3,
        threads=1,
        batch_size=16,
        epochs=1,
        eval_batch_size=32,
        max_val_rows=40,
    )
    run = train(config, tmp / "runs", show_progress=False)
    (model_dir,) = export_run(run, tmp / "models", variants=("fp32",), parity_rows=16)
    add_to_run_export(model_dir, run)
    return run, model_dir


def _texts(run) -> list[str]:
    from core.data import dataset_for
    from training.run_dir import load_run

    return dataset_for(load_run(run)[2]).test.texts


def test_cached_logits_equal_uncached_on_every_test_row(cached_model):
    from service.runtime import OnnxClassifier

    run, model_dir = cached_model
    texts = _texts(run)
    plain = OnnxClassifier(model_dir, prefix_cache=False)
    cached = OnnxClassifier(model_dir)
    assert plain.prefix is None and cached.prefix is not None
    # The prefix is the 4 demonstrations and "Review:", many tokens, computed once.
    assert cached.prefix.length > 20
    ids = cached.encoder.encode(texts).ids
    matching = cached.prefix.rows_matching(ids)
    assert matching.sum() >= len(texts) // 2  # most rows reuse it ...
    a, _ = plain.score_batch(texts)
    b, _ = cached.score_batch(texts)
    np.testing.assert_allclose(a, b, atol=1e-4)  # ... and every row, cached or not, agrees
    assert not matching.all()  # a row whose prefix was cut ran whole, and agrees too
    record = Manifest.read(model_dir).prefix_cache
    assert record["answer_agreement_vs_uncached"] == 1.0
    assert record["rows"] == len(texts)


def test_the_cache_is_the_prefix_state_not_a_constant(cached_model):
    """Another past (the prefix's first half only) gives other logits: the graph really
    reads the cached keys/values."""
    from service.runtime import OnnxClassifier

    run, model_dir = cached_model
    cached = OnnxClassifier(model_dir)
    texts = _texts(run)[:8]
    right = cached.logits(texts)
    half = cached.prefix.length // 2
    cached.prefix.past = {k: v[:, :, :half].copy() for k, v in cached.prefix.past.items()}
    assert not np.allclose(right, cached.logits(texts), atol=1e-4)


def test_served_answers_with_the_cache_are_the_runs(cached_model, service_app):
    from core.run_record import read_predictions

    run, model_dir = cached_model
    texts = _texts(run)
    with app_client(service_app, {"SMALLCLS_MODELS": str(model_dir)}) as client:
        response = client.post("/classify", json={"texts": texts})
        assert response.status_code == 200, response.text
        served = [p["label"] for p in response.json()["predictions"]]
        facts = client.get("/models").json()["models"][0]
    assert facts["prefix_cache_tokens"] == Manifest.read(model_dir).prefix_cache["prefix_tokens"]
    assert served == [a["label"] for a in read_predictions(run)]
