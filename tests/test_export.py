"""Export of every family: ONNX parity with torch, int8 agreement, manifest evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.onnx_export import export_run  # noqa: E402
from service.runtime import OnnxClassifier  # noqa: E402
from smallcls.config import TrainConfig  # noqa: E402
from smallcls.manifest import Manifest, ManifestError, verify_files  # noqa: E402
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice  # noqa: E402
from training.run_dir import RunDirError, load_run  # noqa: E402
from training.train import predict_logits, train  # noqa: E402

FAMILIES = {
    "encoder": dict(family="encoder", head="mean_pool", style="bert"),
    "bidir": dict(family="extracted_encoder", head="mean_pool", style="llama", layers=2),
    "t5enc": dict(family="extracted_encoder", head="mean_pool", style="t5"),
    "last": dict(family="causal_lm", head="last_token", style="llama"),
    "words": dict(
        family="causal_lm",
        head="label_words",
        style="llama",
        prompt_template="{text} sentiment :",
        label_words={"negative": "bad", "positive": "good"},
    ),
}


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def exported(tiny_dirs, tmp_path_factory):
    """{key: (run_dir, [fp32_dir, int8_dir])} for every family, trained on a small slice."""
    root = tmp_path_factory.mktemp("export")
    train_path = sst2_slice(SST2_TRAIN, root / "train.jsonl", 300)
    test_path = sst2_slice(SST2_TEST, root / "test.jsonl", 96)
    out = {}
    for key, spec in FAMILIES.items():
        spec = dict(spec)
        style = spec.pop("style")
        config = TrainConfig(
            name=key,
            base_model=str(tiny_dirs[style]),
            train_path=str(train_path),
            test_path=str(test_path),
            max_val_rows=32,
            learning_rate=1e-3,
            threads=1,
            max_length=32,
            **spec,
        )
        run_dir = train(config, root / "runs", show_progress=False)
        out[key] = (run_dir, export_run(run_dir, root / "models", parity_rows=48))
    return out


@pytest.mark.parametrize("key", list(FAMILIES))
def test_fp32_matches_torch_and_int8_keeps_labels(exported, key):
    run_dir, (fp32_dir, int8_dir) = exported[key]
    assert fp32_dir.name == f"{key}-fp32" and int8_dir.name == f"{key}-int8"

    # Recompute parity independently of what export wrote: torch (HF tokenizer) vs the
    # serving runtime (tokenizers library), on the same texts.
    model, tokenizer, config, labels = load_run(run_dir)
    texts = [row["text"] for row in _read_jsonl(config.test_path)][:40]
    reference = predict_logits(
        model,
        tokenizer,
        texts,
        max_length=config.max_length,
        batch_size=16,
        template=config.prompt_template,
    )
    fp32 = OnnxClassifier(fp32_dir).logits(texts)
    int8 = OnnxClassifier(int8_dir).logits(texts)
    np.testing.assert_allclose(fp32, reference, atol=1e-4, rtol=1e-4)
    agreement = float((int8.argmax(-1) == fp32.argmax(-1)).mean())
    assert agreement >= 0.9

    manifest = Manifest.read(fp32_dir)
    assert manifest.labels == labels == ["negative", "positive"]
    assert manifest.parity["max_abs_logit_diff_vs_torch"] < 1e-4
    assert manifest.metrics["rows"] == 96
    assert 0.0 <= manifest.metrics["accuracy"] <= 1.0
    assert manifest.source_run == str(run_dir.resolve())
    assert manifest.parameters > 0
    int8_manifest = Manifest.read(int8_dir)
    assert int8_manifest.precision == "int8"
    assert 0.9 <= int8_manifest.parity["label_agreement_vs_fp32"] <= 1.0


def test_manifest_accuracy_is_that_of_the_file(exported):
    """The accuracy in the manifest is recomputable from the ONNX file and the test split."""
    _, (fp32_dir, _) = exported["encoder"]
    manifest = Manifest.read(fp32_dir)
    rows = _read_jsonl(
        json.loads((Path(manifest.source_run) / "config.json").read_text())["test_path"]
    )
    preds = OnnxClassifier(fp32_dir).predict([r["text"] for r in rows])
    accuracy = np.mean([p.label == r["label"] for p, r in zip(preds, rows, strict=True)])
    assert accuracy == pytest.approx(manifest.metrics["accuracy"])


def test_tampered_model_is_refused(exported, tmp_path):
    import shutil

    _, (_, int8_dir) = exported["last"]
    copy = shutil.copytree(int8_dir, tmp_path / "copy")
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"model\.onnx has sha256"):
        verify_files(copy, Manifest.read(copy))
    with pytest.raises(ManifestError):
        OnnxClassifier(copy)


def test_incomplete_run_is_not_exported(exported, tmp_path):
    import shutil

    run_dir, _ = exported["encoder"]
    copy = shutil.copytree(run_dir, tmp_path / "run")
    (copy / "COMPLETE").unlink()
    with pytest.raises(RunDirError, match="not a complete training run"):
        export_run(copy, tmp_path / "models")


def test_run_dir_records_what_made_it(exported):
    run_dir, _ = exported["bidir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test"}
    assert metrics["train"]["rows"] == 300 - 30  # 10% carved out for validation
    assert metrics["train"]["tokens_seen"] > metrics["train"]["examples_seen"] > 0
    test = metrics["test"]
    assert len(test["confusion_matrix"]) == 2 and sum(map(sum, test["confusion_matrix"])) == 96
    assert set(test["per_class"]) == {"negative", "positive"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["layers"] == 2 and config["family"] == "extracted_encoder"
    assert "torch" in json.loads((run_dir / "environment.json").read_text())
    assert not run_dir.with_name(run_dir.name + ".partial").exists()


def test_int8_keeps_decoder_mlp_outputs_in_fp32(exported):
    """Llama-style down_proj MatMuls stay fp32 (their activation outliers break per-tensor
    int8); encoders have none to keep."""
    from export.onnx_export import int8_exclusions

    _, (last_fp32, last_int8) = exported["last"]
    _, (enc_fp32, enc_int8) = exported["encoder"]
    kept = int8_exclusions(last_fp32 / "model.onnx")
    assert len(kept) == 3 and all("down_proj" in name for name in kept)  # one per layer
    assert int8_exclusions(enc_fp32 / "model.onnx") == []
    assert Manifest.read(last_int8).quantization["fp32_nodes"] == 3
    assert Manifest.read(enc_int8).quantization == {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": True,
        "fp32_nodes": 0,
    }
    assert Manifest.read(enc_fp32).quantization == {}


def test_zero_shot_label_words_need_no_training(tiny_dirs, tmp_path):
    """Zero-shot label-word scoring: no optimizer step, yet a complete run that exports."""
    config = TrainConfig(
        name="zs",
        family="causal_lm",
        head="label_words",
        zero_shot=True,
        base_model=str(tiny_dirs["llama"]),
        train_path=str(sst2_slice(SST2_TRAIN, tmp_path / "train.jsonl", 100)),
        test_path=str(sst2_slice(SST2_TEST, tmp_path / "test.jsonl", 32)),
        prompt_template="{text} sentiment :",
        label_words={"negative": "bad", "positive": "good"},
        max_val_rows=16,
        threads=1,
    )
    run_dir = train(config, tmp_path / "runs", show_progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["zero_shot"] is True and metrics["train"]["examples_seen"] == 0
    assert not (run_dir / "trainer_log.jsonl").exists()
    (fp32_dir,) = export_run(run_dir, tmp_path / "models", precisions=("fp32",))
    manifest = Manifest.read(fp32_dir)
    assert manifest.head == "label_words" and manifest.truncation_side == "left"
    assert manifest.prompt_template == "{text} sentiment :"
    assert manifest.parity["max_abs_logit_diff_vs_torch"] < 1e-4
    assert not (tmp_path / "models" / "zs-int8").exists()
