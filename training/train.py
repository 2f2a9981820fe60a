"""One training run: data -> fine-tuned classifier -> run directory with its contract.

The run resolves its preprocessing once (`resolve_preprocessing`), fine-tunes
(`training/fit.py`), tunes its decision rule on validation and evaluates under it
(`training/evaluate.py`), and is written atomically (`<name>.partial`, renamed when complete).
Launched as several processes (`torchrun`, `accelerate launch`), they train together and
global rank 0 alone writes the run (`training/distributed.py`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from core.config import TrainConfig, to_dict
from core.data import Dataset, Split, benchmark, dataset_for
from core.preprocessing import Preprocessing, TextEncoder
from training import distributed, pretrained
from training.evaluate import evaluate_and_save
from training.families import Classifier, ModelSpec, build_classifier, prepare_backbone
from training.fit import fit, pick_device
from training.run_dir import (
    COMPLETE,
    check_writable,
    disk_full_error,
    is_disk_full,
    write_json,
)
from training.tokenize import label_token_ids, load_tokenizer

log = logging.getLogger(__name__)


def resolved_truncation(config: TrainConfig) -> str:
    """The config's truncation, else the dataset's, else head (label-word prompts: tail, so
    the question after the text survives)."""
    if config.truncation:
        return config.truncation
    if config.head == "label_words":
        return "tail"
    if config.dataset:
        return benchmark(config.dataset).truncation
    return "head"


def resolve_preprocessing(config: TrainConfig, tokenizer, template: str) -> Preprocessing:
    """The run's preprocessing, resolved once: every later stage reads this record."""
    return Preprocessing(
        max_length=config.max_length,
        truncation=resolved_truncation(config),  # type: ignore[arg-type]
        prompt_template=template,
        pad_token_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
    )


_LOGGERS = ("smallcls", "training", "transformers.trainer")
_saved_levels: dict[str, int] = {}


def attach_log_file(path: Path) -> logging.Handler:
    """The run's train.log gets INFO even when the caller's logging is quieter (tests, an
    embedding application): the run directory must say what happened, e.g. a resume."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            _saved_levels[name] = logger.level
            logger.setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        if name in _saved_levels:
            logger.setLevel(_saved_levels.pop(name))
    handler.close()


def _resumable(run_dir: Path, config: TrainConfig) -> bool:
    """A `.partial` run of the same config with a checkpoint to go on from."""
    config_path = run_dir / "config.json"
    if not config_path.is_file() or not (run_dir / "checkpoints").is_dir():
        return False
    if json.loads(config_path.read_text()) != to_dict(config):
        return False
    return get_last_checkpoint(str(run_dir / "checkpoints")) is not None


def train(
    config: TrainConfig,
    runs_dir: Path | str,
    *,
    show_progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train one model; returns its complete run directory `<runs_dir>/<config.name>`.

    A run killed mid-way (Ctrl-C, SIGKILL) leaves `<name>.partial` with its last checkpoint;
    training the same config again resumes from there (optimizer, schedule, RNG and data order
    restored by the Trainer). `COMPLETE` is written last and the directory renamed only then,
    so a half-written run never looks complete. An unwritable `runs_dir` fails before
    training; a full disk fails with a `RunDirError` saying what to free, and keeps
    `<name>.partial` for the rerun to resume. Under `torchrun` or `accelerate launch` every
    process calls this and returns the same path; global rank 0 alone writes the run."""
    final_dir = Path(runs_dir) / config.name
    run_dir = final_dir.with_name(final_dir.name + ".partial")
    with distributed.joined(pick_device(config.device)) as processes:
        distributed.per_process_batch(config.batch_size, processes.world_size)  # before work
        if processes.is_main:
            _write_run(config, final_dir, run_dir, show_progress, callbacks or [])
        else:
            _train_beside_rank_0(config, run_dir, callbacks=callbacks or [])
    return final_dir


def _write_run(
    config: TrainConfig,
    final_dir: Path,
    run_dir: Path,
    show_progress: bool,
    callbacks: list[TrainerCallback],
) -> None:
    """Global rank 0 (or the only process): prepares `<name>.partial`, trains in it with the
    others, evaluates, completes and renames it; then lets the others go."""
    check_writable(final_dir.parent)
    resume = _resumable(run_dir, config)
    try:
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
        # The other processes start training only now, into the prepared directory.
        distributed.from_rank_0(resume)
        handler = attach_log_file(run_dir / "train.log")
        try:
            if resume:
                log.info("%s: resuming from %s", config.name, run_dir)
            _train_into(config, run_dir, show_progress, resume=resume, callbacks=callbacks)
        finally:
            detach_log_file(handler)
        # Checkpoints go only once the model is saved: if that save fails (a full disk),
        # the rerun resumes from the last checkpoint instead of training from scratch.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / COMPLETE).write_text("ok\n")
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        # The .partial directory stays for the rerun to resume from; a COMPLETE marker cut
        # short by the full disk must not make it look finished.
        (run_dir / COMPLETE).unlink(missing_ok=True)
        checkpoints = run_dir / "checkpoints"
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        raise disk_full_error(run_dir, Path(last) if last else None) from exc
    shutil.rmtree(final_dir, ignore_errors=True)
    run_dir.rename(final_dir)
    distributed.wait_for_all()  # the others return only once the run is complete


def _train_beside_rank_0(
    config: TrainConfig, run_dir: Path, *, callbacks: list[TrainerCallback]
) -> None:
    """A process other than global rank 0: it trains its share of every batch (the Trainer
    writes only its RNG state into rank 0's checkpoints), then waits while rank 0 evaluates
    and writes the run. It logs warnings only, so each line reaches the console once."""
    resume = distributed.from_rank_0(False)
    saved = {name: logging.getLogger(name).level for name in ("smallcls", "training")}
    for name in saved:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        _train_into(config, run_dir, show_progress=False, resume=resume, callbacks=callbacks)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    distributed.wait_for_all()


def few_shot_template(config: TrainConfig, train_split: Split, labels: list[str]) -> str:
    """The prompt with k seeded training examples per class before it, each followed by its
    label word, as in GPT-3's in-context learning (Brown et al. 2020). Examples are cut to
    200 characters so k x classes of them fit the token budget."""
    if not config.few_shot_k or not config.label_words:
        return config.prompt_template
    rng = random.Random(config.seed)
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in zip(train_split.texts, train_split.labels, strict=True):
        by_label[label].append(text)
    demos = []
    for label in labels:
        for text in rng.sample(by_label[label], min(config.few_shot_k, len(by_label[label]))):
            filled = config.prompt_template.replace("{text}", text[:200])
            demos.append((filled + config.label_words[label], rng.random()))
    demos.sort(key=lambda d: d[1])  # shuffled: the label order must not leak into the answer
    return "".join(d[0] + "\n\n" for d in demos) + config.prompt_template


def _build_model(
    config: TrainConfig, source: str, tokenizer, dataset: Dataset, train_split: Split, device: str
) -> tuple[Classifier, dict[str, Any]]:
    """The classifier to fine-tune (after MNTP when asked) and the budget's first entries."""
    spec = ModelSpec(
        family=config.family,  # type: ignore[arg-type]
        head=config.head,  # type: ignore[arg-type]
        num_labels=len(dataset.label_names),
        layers=config.layers,
        label_token_ids=(
            label_token_ids(tokenizer, dataset.label_names, config.label_words)
            if config.head == "label_words" and config.label_words
            else ()
        ),
        problem_type=dataset.problem_type,  # type: ignore[arg-type]
    )
    budget: dict[str, Any] = {"rows": len(train_split), "device": device}
    if config.mntp_steps:
        from training.mntp import adapt_mntp

        lm, budget["mntp"] = adapt_mntp(
            source,
            tokenizer,
            train_split.texts,
            layers=config.layers,
            steps=config.mntp_steps,
            batch_size=config.batch_size,
            max_length=config.max_length,
            mask_prob=config.mntp_mask_prob,
            learning_rate=config.mntp_learning_rate,
            lora_r=config.lora_r or 16,
            seed=config.seed,
            device=device,
        )
        model = Classifier(prepare_backbone(lm.get_decoder(), spec), spec)
    else:
        model = build_classifier(source, spec)
    if model.backbone.config.pad_token_id is None:
        model.backbone.config.pad_token_id = tokenizer.pad_token_id
    budget["parameters"] = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s/%s on %s, %.1fM parameters",
        config.name,
        config.family,
        config.head,
        pretrained.describe(config.base_model),
        budget["parameters"] / 1e6,
    )
    return model, budget


def _train_into(
    config: TrainConfig,
    run_dir: Path,
    show_progress: bool,
    *,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> None:
    torch.set_num_threads(config.threads)
    set_seed(config.seed)
    device = pick_device(config.device)
    main = distributed.current().is_main
    if main:
        write_json(run_dir / "config.json", to_dict(config))

    dataset = dataset_for(config)
    train_split = dataset.train.subsample(config.train_rows, config.seed)
    log.info(
        "%s: %s, %d train / %d validation / %d test rows, %d labels, truncation %s",
        config.name,
        dataset.problem_type,
        len(train_split),
        len(dataset.validation),
        len(dataset.test),
        len(dataset.label_names),
        resolved_truncation(config),
    )
    if dataset.problem_type == "multi_label" and config.head == "label_words":
        raise ValueError("label_words scores one label per text: use a mean_pool/last_token head")
    if config.oos_label and (
        dataset.problem_type == "multi_label" or config.oos_label not in dataset.label_names
    ):
        raise ValueError(
            f"oos_label {config.oos_label!r} must be a label of single-label data (labels: "
            f"{dataset.label_names[:8]}...): name the label your out-of-scope rows carry"
        )

    source = pretrained.resolve(config.base_model)
    tokenizer = load_tokenizer(source)
    model, budget = _build_model(config, source, tokenizer, dataset, train_split, device)
    preprocessing = resolve_preprocessing(
        config, tokenizer, few_shot_template(config, train_split, dataset.label_names)
    )
    budget["truncation"] = preprocessing.truncation
    encoder = TextEncoder(tokenizer.backend_tokenizer, preprocessing)
    if config.zero_shot:
        budget.update(
            seconds=0.0, examples_seen=0, tokens_seen=0, estimated_flops=0, zero_shot=True
        )
        budget["few_shot_k"] = config.few_shot_k
    else:
        fit(
            config,
            run_dir,
            model,
            tokenizer,
            encoder,
            dataset,
            train_split,
            budget,
            device,
            show_progress=show_progress,
            resume=resume,
            callbacks=callbacks or [],
        )
    if not main:
        # Rank 0 alone evaluates: validation and test are small next to training, and one
        # process scoring them keeps the rows in order with no gathering across processes.
        return
    model.to(device)  # evaluate where it trained; fp32 weights, so CPU export matches
    evaluate_and_save(config, run_dir, model, tokenizer, encoder, dataset, budget, device)
