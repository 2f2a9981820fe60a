"""Training with two CPU processes under torchrun (gloo): one writer of the run directory, and
the result of a single process, on a tiny model and a slice of SST-2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.tiny_models import REPO, SST2_TEST, SST2_TRAIN, sst2_slice

# 160 rows less 16 carved for validation: 9 steps of the global batch 16, 8 rows per process,
# so every step holds the same rows with one process or two (no padded last batch).
SETTINGS = {
    "threads": 1,
    "max_length": 32,
    "batch_size": 16,
    "epochs": 1,
    "learning_rate": 3e-3,
    "eval_batch_size": 32,
    "max_val_rows": 40,
}


@pytest.fixture(scope="module")
def setup(tiny_dirs, tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT with dropout off (see tests/distributed_train.py) and the data slices."""
    root = tmp_path_factory.mktemp("ddp")
    model = root / "bert"
    model.mkdir()
    for f in Path(tiny_dirs["bert"]).iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return {
        "model": model,
        "train": sst2_slice(SST2_TRAIN, root / "train.jsonl", 160),
        "test": sst2_slice(SST2_TEST, root / "test.jsonl", 48),
    }


def _launch(
    setup: dict[str, Path], runs: Path, processes: int, *extra: str
) -> subprocess.CompletedProcess:
    args = ["train", "--name", "m", "--family", "encoder", "--quiet", "--runs-dir", str(runs)]
    args += ["--base-model", str(setup["model"]), "--train", str(setup["train"])]
    args += ["--test", str(setup["test"])]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    launcher = [sys.executable]
    if processes > 1:  # --standalone: a free port, so parallel runs on one machine never clash
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(processes)]
    # One thread per process: two processes share the machine's two cores.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, "-m", "tests.distributed_train", *args, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _test_logits(run: Path, texts: list[str]):
    from core.preprocessing import TextEncoder
    from core.run_record import RunRecord
    from training.evaluate import predict_logits
    from training.run_dir import load_run

    model, tokenizer, _, _ = load_run(run)
    encoder = TextEncoder(tokenizer.backend_tokenizer, RunRecord.read(run).preprocessing)
    return predict_logits(model, encoder, texts, batch_size=64)


def _budget(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["train"]


def test_batch_size_is_the_global_batch_split_over_the_processes():
    from training.distributed import per_process_batch

    assert per_process_batch(32, 1) == 32 and per_process_batch(32, 4) == 8
    with pytest.raises(ValueError, match="must be a multiple of 4: set batch_size to 28 or 32"):
        per_process_batch(30, 4)
    with pytest.raises(ValueError, match=r"set batch_size to 3$"):
        per_process_batch(2, 3)


def test_a_single_process_starts_no_process_group():
    import torch.distributed as dist

    from training.distributed import joined

    with joined("cpu") as processes:
        assert (processes.rank, processes.world_size, processes.is_main) == (0, 1, True)
        assert not dist.is_initialized()


@pytest.mark.slow
def test_two_processes_write_one_run_that_equals_a_single_process_run(setup, tmp_path):
    two = _launch(setup, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    run = tmp_path / "two" / "m"
    # Both processes end with the same, complete run; nothing half-written is left.
    assert two.stdout.splitlines().count(f"run: {run}") == 2
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["m"]
    assert (run / "COMPLETE").is_file() and not (run / "checkpoints").exists()
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2

    # Written once: one process's log lines and answers, not two.
    log = (run / "train.log").read_text()
    assert log.count("Running training") == 1 and log.count("m test: accuracy") == 1
    predictions = (run / "test_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 48
    history = (run / "trainer_log.jsonl").read_text().splitlines()
    assert len(history) == len(set(history)) and history

    one = _launch(setup, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    alone = tmp_path / "one" / "m"
    assert json.loads((alone / "environment.json").read_text())["world_size"] == 1

    # batch_size is the global batch: the same steps, rows and tokens, so the same budget.
    a, b = _budget(alone), _budget(run)
    assert (a["processes"], b["processes"]) == (1, 2)
    for key in ("rows", "examples_seen", "tokens_seen", "estimated_flops", "optimizer_steps"):
        assert a[key] == b[key], key
    assert b["optimizer_steps"] == 9

    # Same rows per step, averaged gradients: the same model up to float32 summation order.
    # Measured: logits within 1e-6 (weights 1.4e-6); a 3% change of the learning rate moves
    # them by 1e-2, and batch_size meaning the per-process batch (half the steps) by 0.25.
    texts = [json.loads(line)["text"] for line in setup["test"].read_text().splitlines()]
    gap = abs(_test_logits(run, texts) - _test_logits(alone, texts)).max()
    assert gap < 1e-4, gap
    assert predictions == (alone / "test_predictions.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_from_rank_0s_checkpoint(setup, tmp_path):
    runs = tmp_path / "runs"
    killed = _launch(setup, runs, 2, "--set", "save_steps=4", "--kill-after-save")
    assert killed.returncode != 0
    partial = runs / "m.partial"
    assert partial.is_dir() and not (runs / "m").exists() and not (partial / "COMPLETE").exists()
    checkpoint = partial / "checkpoints" / "checkpoint-4"
    # The Trainer's own split: rank 0 the weights and optimizer, each process its RNG state.
    names = sorted(p.name for p in checkpoint.iterdir())
    assert "optimizer.pt" in names and {"rng_state_0.pth", "rng_state_1.pth"} <= set(names)

    resumed = _launch(setup, runs, 2, "--set", "save_steps=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = runs / "m"
    assert (run / "COMPLETE").is_file() and not partial.exists()
    budget = _budget(run)
    assert budget["resumed_from"] == "checkpoint-4" and budget["optimizer_steps"] == 9
    assert "resuming from checkpoint" in (run / "train.log").read_text()

    # The same model as a run that was never interrupted (same seed, same data order).
    whole = _launch(setup, tmp_path / "whole", 1, "--set", "save_steps=4")
    assert whole.returncode == 0, whole.stderr[-3000:]
    texts = [json.loads(line)["text"] for line in setup["test"].read_text().splitlines()]
    gap = abs(_test_logits(run, texts) - _test_logits(tmp_path / "whole" / "m", texts)).max()
    assert gap < 1e-4, gap
