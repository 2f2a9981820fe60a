"""Export of every family: ONNX parity with torch, int8 agreement, manifest evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from core.config import TrainConfig  # noqa: E402
from core.manifest import VARIANTS, Manifest, ManifestError, verify_files  # noqa: E402
from core.preprocessing import TextEncoder  # noqa: E402
from core.run_record import RunRecord  # noqa: E402
from export.onnx_export import export_run  # noqa: E402
from service.runtime import OnnxClassifier  # noqa: E402
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice  # noqa: E402
from training.evaluate import predict_logits  # noqa: E402
from training.run_dir import RunDirError, load_run  # noqa: E402
from training.train import train  # noqa: E402

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
    """{key: (run_dir, {variant: model_dir})} for every family and variant, on a small slice."""
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
        # Forced: tiny random-ish models need not pass the gate; these tests check parity
        # themselves, and the gate has its own tests (tests/test_gate.py).
        dirs = export_run(
            run_dir,
            root / "models",
            variants=VARIANTS,
            parity_rows=48,
            calibration_rows=64,
            force=True,
        )
        out[key] = (run_dir, {d.name.removeprefix(f"{key}-"): d for d in dirs})
    return out


@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_variant_matches_its_parent(exported, key):
    run_dir, dirs = exported[key]
    assert sorted(dirs) == sorted(VARIANTS)

    # Recompute parity independently of what export wrote: torch (HF tokenizer) vs the
    # serving runtime (tokenizers library), on the same texts.
    model, tokenizer, config, labels = load_run(run_dir)
    texts = [row["text"] for row in _read_jsonl(config.test_path)][:40]
    pre = RunRecord.read(run_dir).preprocessing
    reference = predict_logits(
        model, TextEncoder(tokenizer.backend_tokenizer, pre), texts, batch_size=16
    )
    logits = {v: OnnxClassifier(d).logits(texts) for v, d in dirs.items()}
    np.testing.assert_allclose(logits["fp32"], reference, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits["fp32-opt"], logits["fp32"], atol=1e-4, rtol=1e-4)
    # fp16 keeps float32 logits at the boundary, within fp16's precision of fp32.
    np.testing.assert_allclose(logits["fp16"], logits["fp32"], atol=5e-2)
    for variant in ("int8", "int8-static"):
        agreement = float((logits[variant].argmax(-1) == logits["fp32"].argmax(-1)).mean())
        assert agreement >= 0.9, (variant, agreement)

    manifest = Manifest.read(dirs["fp32"])
    assert manifest.labels == labels == ["negative", "positive"]
    assert manifest.parity["max_abs_logit_diff_vs_torch"] < 1e-4
    assert manifest.metrics["rows"] == 96
    assert 0.0 <= manifest.metrics["accuracy"] <= 1.0
    assert manifest.source_run == str(run_dir.resolve())
    assert manifest.parameters > 0
    assert manifest.gate["passed"] and manifest.gate["checked_on"] == "cpu"
    for variant, model_dir in dirs.items():
        m = Manifest.read(model_dir)
        assert m.variant == variant and m.name == f"{key}-{variant}"
        assert m.precision == (
            "fp16" if variant == "fp16" else "int8" if variant.startswith("int8") else "fp32"
        )
        assert m.file_sizes["model.onnx"] == (model_dir / "model.onnx").stat().st_size
        verify_files(model_dir, m)  # sha256 of every file
        assert m.gate["finite"] is True
        assert {"passed", "forced", "agreement", "max_abs_logit_diff", "accuracy"} <= set(m.gate)
        # Forced only where the gate failed: the flag never hides a failure.
        assert m.gate["forced"] == (not m.gate["passed"])
        if variant != "fp32":
            assert m.parity["label_agreement_vs_fp32"] == m.gate["agreement"]
    assert Manifest.read(dirs["int8-static"]).quantization["method"] == "static_qdq"
    assert Manifest.read(dirs["fp16"]).verified_on["gpu"] is False


@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_family_loads_with_optimum_and_its_card_says_so(exported, key):
    """Decoders and T5 too: optimum runs every family's graph; with the manifest's template
    and a batched, right-padded pipeline it answers as the service does."""
    pytest.importorskip("optimum.onnxruntime")
    from huggingface_hub import ModelCard
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    run_dir, dirs = exported[key]
    fp32 = dirs["fp32"]
    manifest = Manifest.read(fp32)
    model = ORTModelForSequenceClassification.from_pretrained(fp32)
    classify = pipeline(
        "text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(fp32)
    )
    texts = [row["text"] for row in _read_jsonl(load_run(run_dir)[2].test_path)][:40]
    prompts = [manifest.prompt_template.replace("{text}", t) for t in texts]
    answers = classify(prompts, truncation=True, batch_size=8)
    assert [a["label"] for a in answers] == [p.label for p in OnnxClassifier(fp32).predict(texts)]
    for variant, model_dir in dirs.items():
        card = ModelCard.load(model_dir / "README.md").text
        assert "could not load" not in card, variant
        rows = manifest.parity["rows"]
        assert f"gave the same answer on {rows} of {rows}" in card, variant
        assert ("prompt template `'{text} sentiment :'`" in card) == (key == "words")


def test_graph_optimization_fuses_bert_attention(exported):
    _, dirs = exported["encoder"]
    fused = Manifest.read(dirs["fp32-opt"]).optimization["fused"]
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization", 0) >= 2
    llama = Manifest.read(exported["last"][1]["fp32-opt"]).optimization
    assert llama["method"].startswith("onnxruntime offline")
    assert llama["nodes_after"] < llama["nodes_before"]


def test_manifest_accuracy_is_that_of_the_file(exported):
    """The accuracy in the manifest is recomputable from the ONNX file and the test split."""
    fp32_dir = exported["encoder"][1]["fp32"]
    manifest = Manifest.read(fp32_dir)
    rows = _read_jsonl(
        json.loads((Path(manifest.source_run) / "config.json").read_text())["test_path"]
    )
    preds = OnnxClassifier(fp32_dir).predict([r["text"] for r in rows])
    accuracy = np.mean([p.label == r["label"] for p, r in zip(preds, rows, strict=True)])
    assert accuracy == pytest.approx(manifest.metrics["accuracy"])


def test_tampered_model_is_refused(exported, tmp_path):
    import shutil

    int8_dir = exported["last"][1]["int8"]
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


def test_int8_keeps_mlp_outputs_in_fp32(exported):
    """MLP output projections stay fp32 in int8 (their activation outliers break per-tensor
    int8): Llama down_proj, BERT layer.N/output/dense, T5 DenseReluDense/wo."""
    from export.variants import int8_exclusions

    expected = {"last": ("down_proj", 3), "encoder": ("/output/dense", 2), "t5enc": ("wo", 2)}
    for key, (part, layers) in expected.items():
        dirs = exported[key][1]
        kept = int8_exclusions(dirs["fp32"] / "model.onnx")
        assert len(kept) == layers and all(part in name for name in kept), kept
        assert not any("attention" in name for name in kept)
        for variant in ("int8", "int8-static"):
            assert Manifest.read(dirs[variant]).quantization["fp32_nodes"] == layers
    enc = exported["encoder"][1]
    from export.variants import int8_reduce_range

    assert Manifest.read(enc["int8"]).quantization == {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": True,
        "reduce_range": int8_reduce_range(),
        "op_types": ["MatMul", "Attention"],  # the token table stays float
        "fp32_nodes": 2,
    }
    assert Manifest.read(enc["fp32"]).quantization == {}


@pytest.mark.parametrize("key", ["encoder", "last"])
def test_int8_keeps_the_classification_head_in_float(exported, key):
    """The head (a Gemm on the pooled vector) is never quantized: it gains nothing from int8
    and rounds the very logits the decision rule reads."""
    from export.variants import head_exclusions

    dirs = exported[key][1]
    heads = [n for n in head_exclusions(dirs["fp32"] / "model.onnx") if not n.endswith("_MatMul")]
    assert heads, "the head exports as a Gemm"
    for variant in ("int8", "int8-static"):
        graph = onnx.load(str(dirs[variant] / "model.onnx"), load_external_data=False).graph
        made_by = {out: n.op_type for n in graph.node for out in n.output}
        head_nodes = [n for n in graph.node if n.name.startswith(tuple(heads))]
        assert head_nodes, variant
        for node in head_nodes:
            assert node.op_type not in {"MatMulInteger", "DynamicQuantizeMatMul", "QGemm"}, node
            feeders = {made_by.get(i) for i in node.input}
            assert not feeders & {"DequantizeLinear", "DynamicQuantizeLinear"}, (node.name, feeders)


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
    (fp32_dir,) = export_run(run_dir, tmp_path / "models", variants=("fp32",))
    manifest = Manifest.read(fp32_dir)
    assert manifest.head == "label_words" and manifest.preprocessing.truncation == "tail"
    assert manifest.prompt_template == "{text} sentiment :"
    assert manifest.parity["max_abs_logit_diff_vs_torch"] < 1e-4
    assert not (tmp_path / "models" / "zs-int8").exists()


def _damaging_builder(how: str):
    """A stand-in int8 builder that writes a broken copy of the fp32 graph."""
    import onnx
    from onnx import numpy_helper

    def build(src, dst):
        model = onnx.load(str(src))
        (head,) = [n for n in model.graph.node if n.op_type == "Gemm" and "head" in n.name]
        weight_name, bias_name = head.input[1], head.input[2]
        for init in model.graph.initializer:
            if init.name in (weight_name, bias_name):
                array = numpy_helper.to_array(init)
                if how == "scaled":
                    array = array * -3.0  # every label flips
                elif how == "nan" and init.name == bias_name:
                    array = np.full_like(array, np.nan)
                init.CopyFrom(numpy_helper.from_array(array, init.name))
        onnx.save(model, str(dst))
        return {"method": f"damaged ({how})"}

    return build


@pytest.mark.parametrize("how", ["scaled", "nan"])
def test_gate_refuses_a_damaged_variant(exported, tmp_path, monkeypatch, how):
    from export import variants
    from export.onnx_export import export_model

    run_dir, _ = exported["encoder"]
    monkeypatch.setattr(variants, "quantize_int8_dynamic", _damaging_builder(how))
    out = tmp_path / "models"
    result = export_model(run_dir, out, variants=("fp32", "fp32-opt", "int8"), parity_rows=16)
    assert [d.name for d in result.accepted] == ["encoder-fp32", "encoder-fp32-opt"]
    assert result.refused == [out / "refused" / "encoder-int8"]
    assert not (out / "encoder-int8").exists()
    (message,) = result.messages
    assert message.startswith("encoder-int8 refused by the accuracy gate")
    expected = "NaN/inf logits on 96 of 96" if how == "nan" else "agrees with fp32 on 0.00%"
    assert expected in message
    aside = Manifest.read(out / "refused" / "encoder-int8")
    assert aside.gate["passed"] is False and aside.gate["forced"] is False
    assert Manifest.read(out / "encoder-fp32-opt").gate["passed"] is True

    forced = export_model(run_dir, out, variants=("int8",), parity_rows=16, force=True)
    assert [d.name for d in forced.accepted] == ["encoder-int8"]  # fp32 parent not asked for
    # The fp32 the first export made is still there; in a fresh directory the parent goes.
    assert Manifest.read(out / "encoder-fp32").gate["passed"] is True
    fresh = export_model(
        run_dir, tmp_path / "fresh", variants=("int8",), parity_rows=16, force=True
    )
    assert [d.name for d in fresh.accepted] == ["encoder-int8"]
    assert not (tmp_path / "fresh" / "encoder-fp32").exists()
    kept = Manifest.read(out / "encoder-int8")
    assert kept.gate["passed"] is False and kept.gate["forced"] is True
    assert not (out / "refused" / "encoder-int8").exists()


def _smallcls(*args: str, home: Path) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "smallcls", *args], capture_output=True, text=True, env=env
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_model_store_round_trip(exported, tmp_path):
    """register -> list -> show -> load from the store path -> tamper -> remove, through the
    CLI, in a private BENTOML_HOME (a subprocess: BentoML reads it once per process)."""
    home = tmp_path / "bentoml"
    source = exported["encoder"][1]["fp32-opt"]
    code, out = _smallcls("models", "register", str(source), home=home)
    assert code == 0, out
    tag = out.split("registered: ")[1].split()[0]
    assert tag.startswith("encoder-fp32-opt:")

    code, out = _smallcls("models", "list", home=home)
    assert code == 0 and tag in out and "fp32-opt" in out, out
    code, out = _smallcls("models", "show", "encoder-fp32-opt:latest", home=home)
    assert code == 0 and f"tag: {tag}" in out, out
    stored = Path(out.split("path: ")[1].splitlines()[0])
    assert '"variant": "fp32-opt"' in out

    # The store's directory is a complete model directory that serves the same logits.
    texts = ["a gorgeous film", "dull and far too long"]
    np.testing.assert_array_equal(
        OnnxClassifier(stored).logits(texts), OnnxClassifier(source).logits(texts)
    )
    import yaml

    metadata = yaml.safe_load((stored / "model.yaml").read_text())["metadata"]
    assert metadata["name"] == "encoder-fp32-opt" and metadata["gate"]["passed"] is True

    with open(stored / "model.onnx", "ab") as fh:  # a tampered copy in the store
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"model\.onnx has sha256"):
        OnnxClassifier(stored)

    code, out = _smallcls("models", "remove", tag, home=home)
    assert code == 0 and f"removed: {tag}" in out
    code, out = _smallcls("models", "list", home=home)
    assert "no smallcls models" in out
    code, out = _smallcls("models", "show", "encoder-fp32-opt:latest", home=home)
    assert code == 1 and "no model 'encoder-fp32-opt:latest'" in out


def test_a_refused_model_is_not_registered(exported, tmp_path):
    import shutil

    copy = Path(shutil.copytree(exported["encoder"][1]["int8"], tmp_path / "m"))
    manifest = Manifest.read(copy)
    gate = {**manifest.gate, "passed": False, "forced": False, "reasons": ["made up"]}
    Manifest(**{**manifest.__dict__, "gate": gate}).write(copy)
    code, out = _smallcls("models", "register", str(copy), home=tmp_path / "bentoml")
    assert code == 1 and "did not pass the accuracy gate (made up)" in out, out


@pytest.mark.parametrize("method", ["dynamic", "static"])
@pytest.mark.parametrize(
    ("flags", "seven_bit"),
    [
        ({"avx2", "fma"}, True),  # AVX2 without VNNI: u8s8 sums saturate at 16 bits
        ({"avx2", "avx512f", "avx512_vnni"}, False),
        ({"avx2", "avx_vnni"}, False),
        ({"neon", "asimd"}, False),  # not x86
        (None, False),  # flags unreadable
    ],
)
def test_int8_weights_are_7_bit_where_the_cpu_kernel_saturates(
    tmp_path, monkeypatch, flags, seven_bit, method
) -> None:
    """onnxruntime's u8s8 kernel on AVX2 without VNNI overflows with 8-bit weights (SmolLM2
    int8 agreed with fp32 on 65% of rows there): the dynamic and static int8 files get 7-bit
    weights on such a CPU, and the manifest says so."""
    from onnx import numpy_helper

    from export import variants
    from tests.fakes import make_tiny_model_dir

    monkeypatch.setattr(variants, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    assert variants.int8_reduce_range() is seven_bit
    fp32 = make_tiny_model_dir(tmp_path / "fp32")
    out = tmp_path / "int8.onnx"
    if method == "dynamic":
        record = variants.quantize_int8_dynamic(fp32 / "model.onnx", out)
    else:
        texts = ["a good film", "a bad film", "not good at all", "fine"] * 4
        record = variants.quantize_int8_static(
            fp32 / "model.onnx",
            out,
            calibration_texts=texts,
            encode=OnnxClassifier(fp32).encode,
            batch_size=4,
        )
    assert record["reduce_range"] is seven_bit
    model = onnx.load(str(out))
    weights = [
        numpy_helper.to_array(i) for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]  # fmt: skip
    assert weights  # the head's MatMul was quantized
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest <= 64 if seven_bit else largest == 127
