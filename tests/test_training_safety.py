"""Training that cannot write its run: an unwritable runs directory fails before training,
a full disk fails with what to free and keeps the unfinished run for the rerun to resume.

Resume after a kill (SIGKILL mid-run) is tested in test_training_tasks.py
(test_killed_run_resumes_from_its_checkpoint_to_a_complete_run)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from core.config import TrainConfig
from smallcls.cli import main
from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice
from training import run_dir as run_dir_module
from training import train as train_module
from training.run_dir import COMPLETE, RunDirError
from training.train import train


def _config(tiny_dirs, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        name="m",
        family="encoder",
        base_model=str(tiny_dirs["bert"]),
        train_path=str(sst2_slice(SST2_TRAIN, tmp_path / "train.jsonl", 160)),
        test_path=str(sst2_slice(SST2_TEST, tmp_path / "test.jsonl", 48)),
        learning_rate=3e-3,
        threads=1,
        max_length=32,
        batch_size=16,
        epochs=1,
        eval_batch_size=32,
        max_val_rows=40,
    )
    return TrainConfig(**{**base, **kw})


def _no_training(*args, **kwargs):
    raise AssertionError("training started although the runs directory is unwritable")


def test_an_unwritable_runs_dir_fails_before_training(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_train_into", _no_training)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match=r"cannot write runs under .*a-file/runs.*--runs-dir"):
        train(_config(tiny_dirs, tmp_path), blocker / "runs", show_progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_a_read_only_runs_dir_fails_before_training(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_train_into", _no_training)
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="Permission denied"):
            train(_config(tiny_dirs, tmp_path), runs, show_progress=False)
    finally:
        runs.chmod(0o700)


def test_the_cli_says_so_in_one_line(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "_train_into", _no_training)
    (tmp_path / "a-file").write_text("")
    config = _config(tiny_dirs, tmp_path)
    code = main(
        [
            "train",
            *("--name", "m", "--family", "encoder", "--base-model", config.base_model),
            *("--train", config.train_path, "--test", config.test_path),
            *("--runs-dir", str(tmp_path / "a-file" / "runs")),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0 and "cannot write runs under" in err, err


def test_a_full_disk_fails_clearly_and_the_rerun_resumes(tiny_dirs, tmp_path, monkeypatch):
    # 144 training rows = 9 steps of 16; checkpoints at 4 and 8 (only the last one is kept).
    config = _config(tiny_dirs, tmp_path, save_steps=4)
    runs = tmp_path / "runs"

    def full(*args, **kwargs):  # the final model save hits a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(runs / "m.partial"))

    monkeypatch.setattr(run_dir_module, "save_file", full)
    with pytest.raises(RunDirError) as info:
        train(config, runs, show_progress=False)
    message = str(info.value)
    assert message.startswith("disk full: free ") and f" MB at {runs} (" in message
    assert "then rerun the same command: it resumes from checkpoint-8" in message
    # Nothing that looks complete: no final directory, no COMPLETE marker.
    assert not (runs / "m").exists()
    partial = runs / "m.partial"
    assert partial.is_dir() and not (partial / COMPLETE).exists()

    monkeypatch.undo()  # space freed
    run = train(config, runs, show_progress=False)
    assert (run / COMPLETE).is_file() and not partial.exists()
    budget = json.loads((run / "metrics.json").read_text())["train"]
    assert budget["resumed_from"] == "checkpoint-8"


def test_torch_reports_a_full_disk_as_a_runtime_error():
    from training.run_dir import is_disk_full

    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos")
    assert not is_disk_full(torch_error)
    assert is_disk_full(RuntimeError("PytorchStreamWriter failed writing file: file write failed"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
