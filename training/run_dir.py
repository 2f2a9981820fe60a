"""The run directory: what a training run leaves behind, and how export reads it back.

    <run>/config.json        resolved TrainConfig
    <run>/environment.json   versions, git sha, device, threads
    <run>/metrics.json       validation and test metrics, training budget
    <run>/contract.json      the run record (core/run_record.py): dataset files, labels,
                             preprocessing and the decision rule tuned on validation
    <run>/test_predictions.jsonl  the run's answer for every test row under that rule
    <run>/data/              the splits, when the test split was carved from the train file
    <run>/train.log          the log; <run>/trainer_log.jsonl the loss curve
    <run>/model/             spec.json, labels.json, backbone config, weights, tokenizer
    <run>/checkpoints/       Trainer checkpoints while training (a killed run resumes here)
    <run>/COMPLETE           written last: a run without it was interrupted

A run is written to `<run>.partial` and renamed when complete, so a killed run never looks
finished.
"""

from __future__ import annotations

import errno
import json
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from core.config import TrainConfig, from_mapping
from training.families import Classifier, ModelSpec, build_classifier

COMPLETE = "COMPLETE"


class RunDirError(RuntimeError):
    """A run directory that cannot be used; the message says what to do."""


def check_writable(runs_dir: Path) -> None:
    """Fail before any training when runs cannot be written there: finding out at the first
    checkpoint or at the end costs the whole run."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs_dir, prefix=".smallcls-write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        raise RunDirError(
            f"cannot write runs under {runs_dir}: {exc.strerror or exc}: pass a writable "
            "--runs-dir or fix the directory's permissions"
        ) from None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain; torch.save reports it as a RuntimeError
    ("file write failed") from its C++ writer rather than as an OSError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if isinstance(seen, RuntimeError) and "file write failed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def disk_full_error(run_dir: Path, resume_from: Path | None) -> RunDirError:
    """What to free and what a rerun will do. A save writes about as much as the last
    checkpoint again (weights and optimizer state), or as the run holds so far without one."""
    need = _size(resume_from) if resume_from else _size(run_dir)
    where = run_dir.parent
    free = shutil.disk_usage(where).free
    then = (
        f"it resumes from {resume_from.name}"
        if resume_from
        else "it starts again (no checkpoint was saved yet)"
    )
    return RunDirError(
        f"disk full: free {max(need, 1 << 20) / 2**20:.0f} MB at {where} "
        f"({free / 2**20:.0f} MB free now), then rerun the same command: {then}; the "
        f"unfinished run is kept in {run_dir} (no COMPLETE marker, so nothing uses it)"
    )


def environment() -> dict[str, Any]:
    import transformers

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_sha": sha,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_model_dir(
    model_dir: Path,
    model: Classifier,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    write_json(
        model_dir / "spec.json", {**spec.__dict__, "label_token_ids": list(spec.label_token_ids)}
    )
    write_json(model_dir / "labels.json", labels)
    model.backbone.config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # save_model (not save_file) copes with tied weights shared between tensors.
    save_model(model, str(model_dir / "model.safetensors"))


def load_run(
    run_dir: Path | str,
) -> tuple[Classifier, PreTrainedTokenizerBase, TrainConfig, list[str]]:
    """The trained classifier (eval mode, CPU), its tokenizer, config and label names."""
    run_dir = Path(run_dir)
    if not (run_dir / COMPLETE).is_file():
        raise RunDirError(
            f"{run_dir} is not a complete training run (no {COMPLETE} marker): "
            "train again with `smallcls train`"
        )
    model_dir = run_dir / "model"
    spec_data = json.loads((model_dir / "spec.json").read_text())
    spec = ModelSpec(**{**spec_data, "label_token_ids": tuple(spec_data["label_token_ids"])})
    config = AutoConfig.from_pretrained(model_dir)
    model = build_classifier(config, spec)
    load_model(model, str(model_dir / "model.safetensors"))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_config = from_mapping(TrainConfig, json.loads((run_dir / "config.json").read_text()))
    labels = json.loads((model_dir / "labels.json").read_text())
    return model, tokenizer, train_config, labels
