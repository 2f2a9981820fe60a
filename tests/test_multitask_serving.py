"""A multi-task run exports as one model directory and serves every task: each task's served
answers equal the run's own, a batch may mix tasks, and the `task` field is checked."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("torch")

from core.config import TrainConfig
from core.manifest import MODEL_NAME, Manifest
from core.run_record import read_predictions
from tests.conftest import app_client
from tests.fakes import make_tiny_model_dir
from tests.tiny_models import REPO, SST2_TEST, SST2_TRAIN, sst2_slice

TREC = REPO.parent / "shared" / "datasets" / "trec"
TASKS = {
    "sst2": ("review : {text} sentiment :", {"negative": " bad", "positive": " good"}),
    "trec": (
        "question : {text} answer :",
        {
            "ABBR": " short",
            "DESC": " what",
            "ENTY": " thing",
            "HUM": " man",
            "LOC": " place",
            "NUM": " number",
        },
    ),
}


def _trec_slice(src, dst, rows: int) -> None:
    lines = src.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def exported(tiny_dirs, tmp_path_factory):
    """(run dir, model dir): a tiny Llama trained on slices of SST-2 and TREC, exported."""
    from export.onnx_export import export_model
    from training.multitask import Task, train_multitask

    tmp = tmp_path_factory.mktemp("multitask")
    root = tmp / "datasets"
    (root / "sst2").mkdir(parents=True)
    sst2_slice(SST2_TRAIN, root / "sst2" / "train.jsonl", 120)
    sst2_slice(SST2_TEST, root / "sst2" / "test.jsonl", 40)
    _trec_slice(TREC / "train.jsonl", root / "trec" / "train.jsonl", 200)
    _trec_slice(TREC / "test.jsonl", root / "trec" / "test.jsonl", 40)
    tasks = [Task(name, template, words) for name, (template, words) in TASKS.items()]
    base = TrainConfig(
        name="multi",
        family="causal_lm",
        head="last_token",
        base_model=str(tiny_dirs["llama"]),
        datasets_dir=str(root),
        learning_rate=3e-3,
        threads=1,
        max_length=32,
        batch_size=16,
        epochs=1,
        eval_batch_size=32,
        max_val_rows=40,
    )
    run = train_multitask(tasks, base, tmp / "runs")
    result = export_model(run, tmp / "models", variants=["fp32"])
    assert not result.refused, result.messages
    (model_dir,) = result.accepted
    return run, model_dir


def _test_texts(run, task: str) -> list[str]:
    rows = (run.parent.parent / "datasets" / task / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in rows]


def test_one_model_dir_lists_every_task_with_its_contract(exported):
    _, model_dir = exported
    manifest = Manifest.read(model_dir)
    assert (model_dir / MODEL_NAME).is_file()
    assert [t.name for t in manifest.tasks] == ["sst2", "trec"]
    trec = manifest.tasks[1]
    assert trec.prompt_template == "question : {text} answer :"
    assert trec.labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert trec.decision.problem_type == "single_label"
    # The graph's logits are the union of words; each task points at its own.
    assert [manifest.labels[c] for c in trec.columns] == [
        TASKS["trec"][1][label] for label in trec.labels
    ]
    for task in manifest.tasks:
        assert manifest.parity["tasks"][task.name]["answer_agreement_vs_run"] == 1.0
        assert manifest.gate["passed"]


def test_each_task_served_equals_what_the_run_evaluated(exported, service_app):
    run, model_dir = exported
    with app_client(service_app, {"SMALLCLS_MODELS": str(model_dir)}) as client:
        for task in TASKS:
            texts = _test_texts(run, task)
            response = client.post("/classify", json={"texts": texts, "task": task})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["task"] == task
            served = [p["label"] for p in body["predictions"]]
            assert served == [a["label"] for a in read_predictions(run / "tasks" / task)]
            labels = set(TASKS[task][1])
            assert all(set(p["scores"]) == labels for p in body["predictions"])
        facts = client.get("/models").json()["models"][0]
        assert facts["tasks"]["trec"]["labels"] == sorted(TASKS["trec"][1])


def test_a_batch_mixing_tasks_gives_each_text_its_task_answer(exported):
    from service.runtime import OnnxClassifier

    run, model_dir = exported
    model = OnnxClassifier(model_dir)
    sst2, trec = model.tasks["sst2"], model.tasks["trec"]
    a, b = _test_texts(run, "sst2")[:8], _test_texts(run, "trec")[:8]
    mixed = [p for pair in zip(sst2.prompts(a), trec.prompts(b), strict=True) for p in pair]
    logits, _ = model.score_batch(mixed)  # one call, both tasks' rows in it
    alone_a, _ = model.score_batch(sst2.prompts(a))
    alone_b, _ = model.score_batch(trec.prompts(b))
    np.testing.assert_allclose(logits[0::2], alone_a, atol=1e-4)
    np.testing.assert_allclose(logits[1::2], alone_b, atol=1e-4)
    expected = [p.label for p in model.predict(b, task="trec")]
    assert [trec.labels[i] for i in trec.select(logits[1::2]).argmax(-1)] == expected
    with pytest.raises(ValueError, match="sst2"):
        model.predict(a)


def test_the_task_field_is_checked(exported, service_app, tmp_path):
    _, model_dir = exported
    single = make_tiny_model_dir(tmp_path / "single", name="single")
    env = {"SMALLCLS_MODELS": f"{model_dir},{single}"}
    with app_client(service_app, env) as client:
        missing = client.post("/classify", json={"texts": ["hi"], "model": "multi-fp32"})
        assert missing.status_code == 400
        assert missing.json()["field"] == "task"
        assert "sst2" in missing.json()["error"] and "trec" in missing.json()["error"]
        unknown = client.post(
            "/classify", json={"texts": ["hi"], "model": "multi-fp32", "task": "imdb"}
        )
        assert unknown.status_code == 400 and "trec" in unknown.json()["error"]
        refused = client.post(
            "/classify", json={"texts": ["hi"], "model": "single", "task": "sst2"}
        )
        assert refused.status_code == 400 and "one task" in refused.json()["error"]
        plain = client.post("/classify", json={"texts": ["hi"], "model": "single"})
        assert plain.status_code == 200 and "task" not in plain.json()
        tei = client.post("/predict?model=multi-fp32", json={"inputs": "hi"})
        assert tei.status_code == 422 and "trec" in tei.json()["error"]  # TEI's Validation


def test_int8_is_gated_per_task_against_fp32(exported, tmp_path):
    from export.onnx_export import export_model

    run, _ = exported
    result = export_model(run, tmp_path, variants=["int8"], force=True)
    (int8,) = result.accepted  # fp32 was built as its parent, then removed (not asked for)
    manifest = Manifest.read(int8)
    assert manifest.precision == "int8" and not (tmp_path / "multi-fp32").exists()
    assert set(manifest.gate["tasks"]) == {"sst2", "trec"}
    for task in ("sst2", "trec"):
        assert 0.0 <= manifest.parity["tasks"][task]["label_agreement_vs_fp32"] <= 1.0
    # An fp32 exported earlier into the same directory is not taken away.
    kept = tmp_path / "kept"
    export_model(run, kept, variants=["fp32"])
    export_model(run, kept, variants=["int8"], force=True)
    assert Manifest.read(kept / "multi-fp32").precision == "fp32"


def test_a_multitask_run_without_its_task_record_is_refused(tmp_path):
    from export.onnx_export import export_model

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tasks.json").write_text("[]")
    with pytest.raises(ValueError, match="train it again"):
        export_model(tmp_path / "old", tmp_path / "models")
