"""The run directory: what a training run leaves behind, and how export reads it back.

    <run>/config.json        resolved TrainConfig
    <run>/environment.json   versions, git sha, device, threads
    <run>/metrics.json       validation and test metrics, training budget
    <run>/contract.json      the run record (core/run_record.py): dataset files, labels,
                             preprocessing and the decision rule tuned on validation
    <run>/test_predictions.jsonl  the run's answer for every test row under that rule
    <run>/data/              the splits, when the test split was carved from the train file
    <run>/train.log          the log; <run>/trainer_log.jsonl the loss curve
    <run>/model/             a Hugging Face directory of the trained backbone (config.json,
                             model.safetensors: `AutoModel.from_pretrained` loads it), our
                             head beside it (head.safetensors), spec.json, labels.json, the
                             tokenizer and a card (README.md) saying how to load both
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
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from core.config import TrainConfig, from_mapping
from training.families import (
    Classifier,
    ModelSpec,
    build_classifier,
    load_trained_backbone,
    prepare_backbone,
)
from training.run_card import write_run_card

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


HEAD_WEIGHTS = "head.safetensors"
BACKBONE_WEIGHTS = "model.safetensors"
# Keys of the classifier's own parameters (the head) vs its backbone's, in one state dict.
BACKBONE_PREFIX = "backbone."


def save_model_dir(
    model_dir: Path,
    model: Classifier,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
    *,
    base_model: str = "",
) -> None:
    """The backbone as a plain Hugging Face directory (its own keys, its own config), so any
    transformers user loads the trained weights; the head, which no transformers class has,
    in its own file beside it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    write_json(
        model_dir / "spec.json", {**spec.__dict__, "label_token_ids": list(spec.label_token_ids)}
    )
    write_json(model_dir / "labels.json", labels)
    model.backbone.save_pretrained(model_dir, safe_serialization=True)
    head = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith(BACKBONE_PREFIX)
    }
    save_file(head, str(model_dir / HEAD_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(model_dir)
    write_run_card(
        model_dir,
        spec,
        labels,
        base_model=base_model,
        head_keys=sorted(head),
        model_type=model.backbone.config.model_type,
    )


def _is_old_layout(model_dir: Path) -> bool:
    """One weights file with the whole classifier under `backbone.*` keys, no head file."""
    if (model_dir / HEAD_WEIGHTS).is_file():
        return False
    with safe_open(str(model_dir / BACKBONE_WEIGHTS), framework="pt") as weights:
        return any(key.startswith(BACKBONE_PREFIX) for key in weights.keys())  # noqa: SIM118


def _load_classifier(model_dir: Path, spec: ModelSpec) -> Classifier:
    if _is_old_layout(model_dir):
        model = build_classifier(AutoConfig.from_pretrained(model_dir), spec)
        load_model(model, str(model_dir / BACKBONE_WEIGHTS))
        return model
    backbone = prepare_backbone(load_trained_backbone(str(model_dir)), spec)
    model = Classifier(backbone, spec)
    missing, unexpected = model.load_state_dict(load_file(model_dir / HEAD_WEIGHTS), strict=False)
    missing = [key for key in missing if not key.startswith(BACKBONE_PREFIX)]
    if missing or unexpected:
        raise RunDirError(
            f"{model_dir / HEAD_WEIGHTS} does not fit the classifier in spec.json (missing "
            f"{missing}, unexpected {unexpected}): train the run again"
        )
    return model


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
    model = _load_classifier(model_dir, spec)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_config = from_mapping(TrainConfig, json.loads((run_dir / "config.json").read_text()))
    labels = json.loads((model_dir / "labels.json").read_text())
    return model, tokenizer, train_config, labels
