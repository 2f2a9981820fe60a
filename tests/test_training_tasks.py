"""Training on tiny models: multi-label, out-of-scope rejection, class weights,
resume after a kill, LoRA merged and exported, few-shot prompts, MNTP, distillation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from core.config import TrainConfig
from core.run_record import RunRecord
from tests.tiny_models import REPO, SST2_TEST, SST2_TRAIN, sst2_slice
from training.train import train

EMOTIONS = {"good": "joy", "fun": "joy", "love": "love", "dear": "love", "bad": "anger"}


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _multi_label_rows(n: int, offset: int = 0) -> list[dict]:
    """Texts whose labels are the emotions of the words in them (some rows have none)."""
    import random

    words = [*list(EMOTIONS), "plain", "movie"]
    rng = random.Random(offset)
    rows = []
    for i in range(offset, offset + n):
        picked = rng.sample(words, 1 + i % 3)
        labels = sorted({EMOTIONS[w] for w in picked if w in EMOTIONS})
        rows.append({"text": " ".join([*picked, "the", "film"]), "labels": labels})
    return rows


def _tiny(tiny_dirs, style="bert", **kw) -> TrainConfig:
    base = dict(
        name="m",
        family="encoder",
        base_model=str(tiny_dirs[style]),
        learning_rate=3e-3,
        threads=1,
        max_length=32,
        batch_size=16,
        epochs=2,
        eval_batch_size=32,
        max_val_rows=40,
    )
    return TrainConfig(**{**base, **kw})


def _sst2(tmp_path, train_rows=160, test_rows=48) -> dict:
    return dict(
        train_path=str(sst2_slice(SST2_TRAIN, tmp_path / "train.jsonl", train_rows)),
        test_path=str(sst2_slice(SST2_TEST, tmp_path / "test.jsonl", test_rows)),
    )


def test_multi_label_uses_sigmoid_bce_and_stores_tuned_thresholds(tiny_dirs, tmp_path):
    d = tmp_path / "data"
    config = _tiny(
        tiny_dirs,
        train_path=str(_write(d / "train.jsonl", _multi_label_rows(240))),
        validation_path=str(_write(d / "validation.jsonl", _multi_label_rows(60, 1000))),
        test_path=str(_write(d / "test.jsonl", _multi_label_rows(60, 2000))),
        epochs=6,
        class_weighting="balanced",
    )
    run = train(config, tmp_path / "runs", show_progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["problem_type"] == "multi_label"
    assert {"micro_f1", "macro_f1", "exact_match"} <= set(test) and "accuracy" not in test
    assert test["micro_f1"] > 0.6, test  # the words decide the labels: learnable
    spec = json.loads((run / "model" / "spec.json").read_text())
    assert spec["problem_type"] == "multi_label"
    decision = RunRecord.read(run).decision
    assert decision.problem_type == "multi_label"
    assert len(decision.thresholds) == 3 and all(0 < t < 1 for t in decision.thresholds)
    # The run's model loads back and its loss is BCE over independent sigmoids.
    import torch

    from training.run_dir import load_run

    model, _, _, labels = load_run(run)
    assert labels == ["anger", "joy", "love"]
    logits = torch.zeros(2, 3)
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss = model.loss(logits, target, None)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)


def _clinc_like(tmp_path):
    """A dataset folder named clinc150 with two intents and out-of-scope texts."""
    root = tmp_path / "datasets"

    def rows(n, offset):
        out = []
        for i in range(offset, offset + n):
            kind = i % 3
            if kind == 0:
                out.append({"text": f"what is my balance please {i % 5}", "label": "balance"})
            elif kind == 1:
                out.append({"text": f"play some music now {i % 5}", "label": "play_music"})
            else:
                out.append({"text": f"how tall is the tower {i % 7}", "label": "oos"})
        return out

    for split, n, offset in (("train", 150, 0), ("validation", 60, 500), ("test", 60, 900)):
        _write(root / "clinc150" / f"{split}.jsonl", rows(n, offset))
    return root


def test_out_of_scope_rejection_threshold_is_tuned_and_stored(tiny_dirs, tmp_path):
    config = _tiny(tiny_dirs, dataset="clinc150", datasets_dir=str(_clinc_like(tmp_path)), epochs=3)
    run = train(config, tmp_path / "runs", show_progress=False)
    decision = RunRecord.read(run).decision
    assert decision.problem_type == "single_label" and decision.oos_label == "oos"
    assert 0 <= decision.rejection_threshold < 1
    test = json.loads((run / "metrics.json").read_text())["test"]
    for key in ("oos", "oos_argmax"):
        assert {"in_scope_accuracy", "oos_recall", "oos_precision"} <= set(test[key])
    assert test["oos"]["in_scope_rows"] == 40 and test["oos"]["oos_rows"] == 20
    assert "macro_f1" in test


def test_a_users_own_out_of_scope_label_is_rejected_like_clinc150s(tiny_dirs, tmp_path):
    folder = _clinc_like(tmp_path) / "clinc150"
    files = {f"{split}_path": str(folder / f"{split}.jsonl") for split in ("train", "test")}
    config = _tiny(tiny_dirs, **files, oos_label="oos", epochs=3)
    decision = RunRecord.read(train(config, tmp_path / "runs", show_progress=False)).decision
    assert decision.oos_label == "oos" and 0 <= decision.rejection_threshold < 1
    with pytest.raises(ValueError, match="oos_label 'none' must be a label"):
        train(_tiny(tiny_dirs, **files, oos_label="none"), tmp_path / "runs", show_progress=False)


def test_plain_single_label_run_writes_no_thresholds_and_records_budget(tiny_dirs, tmp_path):
    run = train(
        _tiny(tiny_dirs, **_sst2(tmp_path), epochs=1), tmp_path / "runs", show_progress=False
    )
    decision = RunRecord.read(run).decision
    assert not decision.rejects and not decision.multi_label and decision.thresholds is None
    budget = json.loads((run / "metrics.json").read_text())["train"]
    for key in ("seconds", "examples_seen", "tokens_seen", "estimated_flops", "optimizer_steps"):
        assert budget[key] > 0, key
    assert budget["estimated_flops"] == 6 * budget["parameters"] * budget["tokens_seen"]
    assert budget["truncation"] == "head"


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from transformers import TrainerCallback
    from core.config import TrainConfig
    from training.train import train

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            os.kill(os.getpid(), signal.SIGKILL)  # as a crash or `kill -9` would

    config = TrainConfig(**json.loads(sys.argv[1]))
    train(config, sys.argv[2], show_progress=False, callbacks=[KillAfterSave()])
    """
)


def test_killed_run_resumes_from_its_checkpoint_to_a_complete_run(tiny_dirs, tmp_path):
    # 160 rows less 16 carved for validation = 9 steps of 16; killed after step 4's checkpoint.
    config = _tiny(tiny_dirs, **_sst2(tmp_path), epochs=1, save_steps=4)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = json.dumps(config.__dict__)
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, args, str(runs)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = runs / "m.partial"
    assert partial.is_dir() and not (runs / "m").exists()
    assert not (partial / "COMPLETE").exists()  # a half-written run never looks complete
    assert (partial / "checkpoints" / "checkpoint-4").is_dir()

    run = train(config, runs, show_progress=False)
    assert run == runs / "m" and (run / "COMPLETE").is_file() and not partial.exists()
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert budget["resumed_from"] == "checkpoint-4"
    assert budget["optimizer_steps"] == 9
    assert "resuming from checkpoint" in (run / "train.log").read_text()

    # The same result as a run that was never interrupted (same seed, same data order).
    whole = train(config, tmp_path / "whole", show_progress=False)
    a = json.loads((run / "metrics.json").read_text())["test"]
    b = json.loads((whole / "metrics.json").read_text())["test"]
    assert a["confusion_matrix"] == b["confusion_matrix"]
    from safetensors.torch import load_file

    for name in ("model.safetensors", "head.safetensors"):  # the backbone, then the head
        wa, wb = load_file(run / "model" / name), load_file(whole / "model" / name)
        assert wa.keys() == wb.keys()
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_changed_config_does_not_resume(tiny_dirs, tmp_path):
    from training.train import _resumable

    config = _tiny(tiny_dirs, **_sst2(tmp_path))
    partial = tmp_path / "m.partial"
    (partial / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (partial / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (partial / "config.json").write_text(json.dumps(config.__dict__))
    assert _resumable(partial, config)
    other = TrainConfig(**{**config.__dict__, "learning_rate": 1e-4})
    assert not _resumable(partial, other)


def test_lora_adapters_merge_and_the_run_exports(tiny_dirs, tmp_path):
    from core.manifest import Manifest
    from export.onnx_export import export_run

    config = _tiny(
        tiny_dirs,
        "llama",
        family="causal_lm",
        head="last_token",
        lora_r=4,
        **_sst2(tmp_path, test_rows=32),
        epochs=1,
    )
    run = train(config, tmp_path / "runs", show_progress=False)
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert budget["lora"]["r"] == 4
    assert budget["trainable_parameters"] < budget["parameters"] / 2
    weights = (run / "model" / "model.safetensors").read_bytes()
    assert b"lora_" not in weights[:20000]  # merged: plain weight names only
    (model_dir,) = export_run(run, tmp_path / "models", variants=("fp32",), parity_rows=16)
    manifest = Manifest.read(model_dir)
    assert manifest.parity["max_abs_logit_diff_vs_torch"] < 1e-3


def test_few_shot_prompt_puts_k_examples_per_class_before_the_text(tiny_dirs, tmp_path):
    config = _tiny(
        tiny_dirs,
        "llama",
        family="causal_lm",
        head="label_words",
        label_words={"negative": " bad", "positive": " good"},
        prompt_template="Review: {text}\nSentiment:",
        zero_shot=True,
        few_shot_k=2,
        max_length=128,
        **_sst2(tmp_path, test_rows=32),
    )
    run = train(config, tmp_path / "runs", show_progress=False)
    # The prompt with its examples is the run's recorded preprocessing: export copies it.
    template = RunRecord.read(run).preprocessing.prompt_template
    assert template.endswith("Review: {text}\nSentiment:")
    assert template.count("Sentiment: bad\n\n") == 2 and template.count("Sentiment: good\n\n") == 2
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert budget["zero_shot"] and budget["few_shot_k"] == 2 and budget["examples_seen"] == 0


def test_mntp_adapts_the_whole_decoder_before_it_is_cut(tiny_dirs, tmp_path, monkeypatch):
    # The LM head reads only the last layer, so MNTP must see all of them (the tiny llama has
    # 3); the classifier keeps the first 2.
    import training.mntp

    layers_seen = []
    real_loss = training.mntp.mntp_loss

    def spy(lm, *args):
        layers_seen.append(len(lm.get_decoder().layers))
        return real_loss(lm, *args)

    monkeypatch.setattr(training.mntp, "mntp_loss", spy)
    config = _tiny(
        tiny_dirs,
        "llama",
        family="extracted_encoder",
        layers=2,
        mntp_steps=6,
        lora_r=0,
        **_sst2(tmp_path, test_rows=32),
        epochs=1,
    )
    run = train(config, tmp_path / "runs", show_progress=False)
    mntp = json.loads((run / "metrics.json").read_text())["train"]["mntp"]
    assert mntp["steps"] == 6 and mntp["tokens_seen"] > 0
    assert layers_seen == [3] * 6
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert mntp["parameters"] > budget["parameters"]  # MNTP's FLOPs count the whole decoder
    # Fine-tuning after MNTP is full fine-tuning: the merged adapters leave nothing frozen.
    assert budget["trainable_parameters"] == budget["parameters"]
    from training.run_dir import load_run

    model = load_run(run)[0]
    assert len(model.backbone.layers) == 2


def test_distilled_student_learns_from_teacher_soft_labels(tiny_dirs, tmp_path):
    data = _sst2(tmp_path)
    teacher = train(
        _tiny(tiny_dirs, name="teacher", **data, epochs=1), tmp_path / "runs", show_progress=False
    )
    unlabeled = _write(tmp_path / "unlabeled.jsonl", [{"text": "a fine film"}] * 8)
    student = _tiny(
        tiny_dirs,
        name="student",
        **data,
        epochs=1,
        teacher_run=str(teacher),
        distill_alpha=0.7,
        unlabeled_path=str(unlabeled),
    )
    run = train(student, tmp_path / "runs", show_progress=False)
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert budget["distillation"]["unlabeled_rows"] == 8
    assert budget["examples_seen"] == 144 + 8  # 160 less 16 carved for validation


def test_distillation_loss_is_kl_at_temperature(tiny_dirs):
    import torch
    from transformers import AutoConfig

    from training.families import ModelSpec, build_classifier

    model = build_classifier(
        AutoConfig.from_pretrained(tiny_dirs["bert"]),
        ModelSpec(family="encoder", head="mean_pool", num_labels=2),
    )
    model.distill_alpha, model.distill_temperature = 1.0, 2.0
    logits = torch.tensor([[2.0, 0.0]])
    same = torch.softmax(logits / 2.0, dim=-1)
    assert model.loss(logits, torch.tensor([1]), same).item() == pytest.approx(0.0, abs=1e-6)
    # Unlabeled rows (-100) count only through the teacher.
    assert model.loss(logits, torch.tensor([-100]), same).item() == pytest.approx(0.0, abs=1e-6)


def test_one_causal_lm_trains_on_several_tasks_with_task_prompts(tiny_dirs, tmp_path):
    from training.multitask import Task, train_multitask

    root = tmp_path / "datasets"
    (root / "sst2").mkdir(parents=True)
    sst2_slice(SST2_TRAIN, root / "sst2" / "train.jsonl", 120)
    sst2_slice(SST2_TEST, root / "sst2" / "test.jsonl", 40)
    _write(
        root / "trec" / "train.jsonl",
        [{"text": f"who is {i}", "label": "HUM"} for i in range(30)]
        + [{"text": f"where is {i}", "label": "LOC"} for i in range(30)],
    )
    _write(
        root / "trec" / "test.jsonl",
        [{"text": "who is it", "label": "HUM"}, {"text": "where is it", "label": "LOC"}],
    )
    tasks = [
        Task("sst2", "review : {text} sentiment :", {"negative": " bad", "positive": " good"}),
        Task("trec", "question : {text} answer :", {"HUM": " man", "LOC": " place"}),
    ]
    base = _tiny(
        tiny_dirs,
        "llama",
        name="multi",
        family="causal_lm",
        head="last_token",
        datasets_dir=str(root),
        epochs=1,
    )
    run = train_multitask(tasks, base, tmp_path / "runs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"sst2", "trec"}
    assert metrics["tasks"]["trec"]["test"]["rows"] == 2
    assert metrics["train"]["tasks"] == {"sst2": 108, "trec": 54}  # 10% carved for validation
    assert json.loads((run / "model" / "labels.json").read_text()) == [
        " bad",
        " good",
        " man",
        " place",
    ]
    assert (run / "COMPLETE").is_file()
