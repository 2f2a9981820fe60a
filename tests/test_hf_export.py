"""Export directories that the Hugging Face stack loads, their cards, and run directories whose
`model/` loads with `from_pretrained`: optimum + transformers.pipeline against our runtime."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optimum.onnxruntime")

from huggingface_hub import ModelCard  # noqa: E402
from optimum.onnxruntime import ORTModelForSequenceClassification  # noqa: E402
from transformers import AutoModel, AutoTokenizer, pipeline  # noqa: E402

from core.config import TrainConfig  # noqa: E402
from core.manifest import MANIFEST_NAME, Manifest, verify_files  # noqa: E402
from export.model_card import differences, usage  # noqa: E402
from export.onnx_export import export_model, export_run  # noqa: E402
from service.runtime import OnnxClassifier  # noqa: E402
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice  # noqa: E402
from training.run_dir import load_run  # noqa: E402
from training.train import train  # noqa: E402

EMOTIONS = {"good": "joy", "fun": "joy", "love": "love", "dear": "love", "bad": "anger"}


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line]


def _multi_label_rows(n: int, seed: int) -> list[dict]:
    """Texts whose labels are the emotions of the words in them (some rows have none)."""
    words = [*EMOTIONS, "plain", "movie"]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        picked = rng.sample(words, 1 + i % 3)
        labels = sorted({EMOTIONS[w] for w in picked if w in EMOTIONS})
        rows.append({"text": " ".join([*picked, "the", "film"]), "labels": labels})
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _config(tiny_dirs, **kw) -> TrainConfig:
    base = dict(
        family="encoder",
        head="mean_pool",
        base_model=str(tiny_dirs["bert"]),
        max_val_rows=32,
        learning_rate=3e-3,
        threads=1,
        max_length=32,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def single(tiny_dirs, tmp_path_factory):
    """(run_dir, fp32 dir, int8 dir, test texts) of a tiny BERT on SST-2 (96 test rows, some
    longer than max_length, so truncation matters)."""
    root = tmp_path_factory.mktemp("hf-single")
    test = sst2_slice(SST2_TEST, root / "test.jsonl", 96)
    config = _config(
        tiny_dirs,
        name="enc",
        train_path=str(sst2_slice(SST2_TRAIN, root / "train.jsonl", 300)),
        test_path=str(test),
    )
    run = train(config, root / "runs", show_progress=False)
    fp32, int8 = export_run(run, root / "models", variants=("fp32", "int8"), force=True)
    return run, fp32, int8, _texts(test)


@pytest.fixture(scope="module")
def multi(tiny_dirs, tmp_path_factory):
    """(fp32 dir, test texts) of a tiny multi-label BERT with thresholds tuned on validation."""
    root = tmp_path_factory.mktemp("hf-multi")
    config = _config(
        tiny_dirs,
        name="multi",
        train_path=_write(root / "train.jsonl", _multi_label_rows(240, 0)),
        validation_path=_write(root / "validation.jsonl", _multi_label_rows(60, 1)),
        test_path=_write(root / "test.jsonl", _multi_label_rows(60, 2)),
        epochs=4,
        batch_size=16,
    )
    run = train(config, root / "runs", show_progress=False)
    (fp32,) = export_run(run, root / "models", variants=("fp32",), force=True)
    return fp32, _texts(root / "test.jsonl")


def _pipeline(model_dir: Path):
    model = ORTModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return pipeline("text-classification", model=model, tokenizer=tokenizer)


def test_optimum_pipeline_answers_as_the_service_on_every_test_row(single):
    _, fp32, int8, texts = single
    classify = _pipeline(fp32)
    answers = classify(texts, truncation=True)
    served = OnnxClassifier(fp32).predict(texts)
    assert [a["label"] for a in answers] == [p.label for p in served]
    # Softmax from config.json's problem_type: the same probabilities, not just the argmax.
    top = np.array([a["score"] for a in answers])
    np.testing.assert_allclose(top, [p.scores[p.label] for p in served], atol=1e-5)
    # int8 scales activations per call: compare one text per call on both sides.
    classify8, ours8 = _pipeline(int8), OnnxClassifier(int8)
    alone = [ours8.predict([t])[0].label for t in texts]
    assert [a["label"] for a in classify8(texts, truncation=True)] == alone


def test_multi_label_pipeline_with_the_manifest_thresholds(multi):
    model_dir, texts = multi
    manifest = Manifest.read(model_dir)
    cuts = dict(zip(manifest.labels, manifest.thresholds, strict=True))
    scores = _pipeline(model_dir)(texts, truncation=True, top_k=None)
    served = OnnxClassifier(model_dir).predict(texts)
    for row, prediction in zip(scores, served, strict=True):
        # Sigmoids (problem_type multi_label_classification), one per label.
        assert {s["label"]: s["score"] for s in row} == pytest.approx(prediction.scores, abs=1e-5)
        chosen = [s["label"] for s in row if s["score"] >= cuts[s["label"]]]
        assert sorted(chosen) == sorted(prediction.labels)
    assert any(len(p.labels) > 1 for p in served)  # a real multi-label answer was compared


@pytest.mark.parametrize("which", ["single", "multi"])
def test_the_cards_snippet_runs_and_answers_as_the_service(single, multi, which, monkeypatch):
    model_dir = single[1] if which == "single" else multi[0]
    manifest = Manifest.read(model_dir)
    monkeypatch.chdir(model_dir.parent)  # the snippet loads the directory by its name
    namespace: dict = {}
    exec(usage(manifest, manifest.name), namespace)
    served = OnnxClassifier(model_dir).predict(["a gorgeous, witty film"])
    expected = [p.label for p in served] if which == "single" else [list(served[0].labels)]
    assert namespace["answers"] == expected


def test_model_directory_files_and_their_hashes(single):
    fp32 = single[1]
    manifest = Manifest.read(fp32)
    on_disk = {p.name for p in fp32.iterdir()} - {MANIFEST_NAME}
    assert {"model.onnx", "tokenizer.json", "config.json", "tokenizer_config.json"} <= on_disk
    assert {"special_tokens_map.json", "README.md"} <= on_disk
    assert set(manifest.files) == on_disk  # every file hashed, the card included
    verify_files(fp32, manifest)
    config = json.loads((fp32 / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["problem_type"] == "single_label_classification"
    assert config["architectures"] == ["BertForSequenceClassification"]
    # tokenizer.json is still the one the service reads: no padding or truncation baked in.
    tokenizer = json.loads((fp32 / "tokenizer.json").read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None
    settings = json.loads((fp32 / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == manifest.max_length == 32
    assert settings["padding_side"] == "right" and settings["truncation_side"] == "right"


def test_the_card_parses_and_carries_the_gate_record(single):
    _, fp32, int8, _ = single
    for model_dir in (fp32, int8):
        manifest = Manifest.read(model_dir)
        card = ModelCard.load(model_dir / "README.md")
        data = card.data
        assert data.pipeline_tag == "text-classification" and data.library_name == "optimum"
        assert data.model_name == manifest.name
        results = {r.metric_type: r.metric_value for r in data.eval_results}
        assert results["accuracy"] == pytest.approx(manifest.metrics["accuracy"], abs=1e-6)
        gate = data.smallcls["gate"]
        assert gate["passed"] == manifest.gate["passed"]
        assert gate["agreement"] == manifest.gate["agreement"]
        assert data.smallcls["variant"] == manifest.variant
        assert "## Accuracy gate" in card.text and f"{manifest.gate['agreement']:.2%}" in card.text
        assert "**Yes**" in card.text  # a plain encoder: the pipeline reproduces it
        rows = manifest.parity["rows"]
        assert f"gave the same answer on {rows} of {rows}" in card.text
    assert "Dynamic int8 scales activations per call" in ModelCard.load(int8 / "README.md").text


def test_the_card_names_every_difference_from_the_manifest(single, multi):
    plain = Manifest.read(single[1])
    assert differences(plain) == []
    pre, rule = plain.preprocessing, plain.decision
    templated = dataclasses.replace(
        plain, preprocessing=dataclasses.replace(pre, prompt_template="Review: {text} Verdict:")
    )
    (said,) = differences(templated)
    assert "'Review: {text} Verdict:'" in said
    head_tail = dataclasses.replace(
        plain, preprocessing=dataclasses.replace(pre, truncation="head_tail")
    )
    (said,) = differences(head_tail)
    assert "over 32 tokens" in said and "first 25%" in said and "last 75%" in said
    rejecting = dataclasses.replace(
        plain, decision=dataclasses.replace(rule, oos_label="negative", rejection_threshold=0.7)
    )
    (said,) = differences(rejecting)
    assert "`negative` (rejected)" in said and "below 0.7" in said
    multi_manifest = Manifest.read(multi[0])
    (said,) = differences(multi_manifest)
    assert all(
        f"`{label}` {t:.4g}" in said
        for label, t in zip(multi_manifest.labels, multi_manifest.thresholds, strict=True)
    )
    card = ModelCard.load(multi[0] / "README.md")
    assert "**Not with a plain call.**" in card.text and said in card.text


def test_run_model_dir_loads_the_trained_backbone_with_from_pretrained(single):
    run, _, _, _ = single
    model, _, _, _ = load_run(run)
    loaded = AutoModel.from_pretrained(run / "model")
    trained = model.backbone.embeddings.word_embeddings.weight
    torch.testing.assert_close(loaded.embeddings.word_embeddings.weight, trained)
    torch.testing.assert_close(
        loaded.encoder.layer[1].output.dense.weight,
        model.backbone.encoder.layer[1].output.dense.weight,
    )
    torch.manual_seed(0)
    fresh = AutoModel.from_config(loaded.config)  # what random weights would look like
    assert not torch.allclose(fresh.embeddings.word_embeddings.weight, trained)
    from safetensors.torch import load_file

    head = load_file(run / "model" / "head.safetensors")
    assert set(head) == {"head.weight", "head.bias"}
    torch.testing.assert_close(head["head.weight"], model.head.weight)
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "transformers"
    assert "AutoModel.from_pretrained" in card.text and "head.safetensors" in card.text


def test_a_run_saved_in_the_old_layout_still_loads(single, tmp_path):
    import shutil

    from safetensors.torch import save_model

    run = Path(shutil.copytree(single[0], tmp_path / "old"))
    model, tokenizer, _, _ = load_run(run)
    (run / "model" / "head.safetensors").unlink()
    save_model(model, str(run / "model" / "model.safetensors"))  # one file, backbone.* keys
    old, _, _, _ = load_run(run)
    batch = tokenizer(["a gorgeous film", "dull"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(old(ids, mask)["logits"], model(ids, mask)["logits"])


def test_export_shows_progress_unless_quiet(single, tmp_path, capsys):
    from smallcls.cli import main

    run = single[0]
    export_model(
        run,
        tmp_path / "a",
        variants=("int8-static",),
        calibration_rows=40,
        force=True,
        show_progress=True,
    )
    err = capsys.readouterr().err
    assert "enc-fp32: test split" in err and "96/96" in err
    assert "int8-static: calibrating" in err and "40/40" in err
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--force", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "test split" not in err and "text/s" not in err


def test_a_directory_optimum_cannot_load_is_said_so_on_its_card(single, tmp_path):
    import shutil

    from export.hf_files import check_with_pipeline
    from export.model_card import write_card

    copy = Path(shutil.copytree(single[1], tmp_path / "no-config"))
    (copy / "config.json").unlink()  # what optimum needs to build the model class
    manifest = Manifest.read(copy)
    check = check_with_pipeline(copy, manifest, single[3][:4])
    assert not check.loaded and check.error
    write_card(copy, manifest, check)
    assert "**optimum could not load or run this directory**" in (copy / "README.md").read_text()


def test_without_optimum_the_card_says_it_was_not_checked(single, tmp_path, monkeypatch):
    import shutil
    import sys

    from export.hf_files import check_with_pipeline
    from export.model_card import write_card

    copy = Path(shutil.copytree(single[1], tmp_path / "m"))
    manifest = Manifest.read(copy)
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)  # import fails
    check = check_with_pipeline(copy, manifest, single[3][:4])
    assert not check.installed and not check.loaded
    write_card(copy, manifest, check)
    text = (copy / "README.md").read_text()
    assert "Not checked at export: optimum-onnx is not installed" in text
    assert "could not load" not in text
