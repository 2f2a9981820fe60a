"""One training run: data -> fine-tuned classifier -> run directory with metrics.

Uses the Hugging Face Trainer (seeds, schedules, bf16/fp16 on CUDA, progress bars) rather
than a hand-written loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from core.config import TrainConfig, to_dict
from core.data import (
    Dataset,
    DataSource,
    Split,
    benchmark,
    dataset_for,
    read_text_column,
    write_split,
)
from core.decision import DecisionRule, Decisions, sigmoid, softmax
from core.metrics import decision_metrics
from core.preprocessing import Preprocessing, TextEncoder
from core.run_record import RunRecord, write_predictions
from training import pretrained
from training.adapters import add_lora, merge_lora
from training.families import Classifier, ModelSpec, build_classifier, prepare_backbone
from training.run_dir import (
    COMPLETE,
    check_writable,
    disk_full_error,
    environment,
    is_disk_full,
    load_run,
    save_model_dir,
    write_json,
)
from training.thresholds import tune_label_thresholds, tune_rejection_threshold
from training.tokenize import label_token_ids, load_tokenizer

log = logging.getLogger(__name__)


class EncodedTexts(torch.utils.data.Dataset):
    """Token ids with gold labels (an int, or a 0/1 vector for multi-label; -100 / -1s for
    unlabeled rows) and, when distilling, the teacher's soft labels."""

    def __init__(
        self,
        encodings: dict[str, list[list[int]]],
        labels: list,
        soft_labels: np.ndarray | None = None,
    ) -> None:
        self.encodings = encodings
        self.labels = labels
        self.soft_labels = soft_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {
            "input_ids": self.encodings["input_ids"][i],
            "attention_mask": self.encodings["attention_mask"][i],
            "labels": self.labels[i],
        }
        if self.soft_labels is not None:
            item["soft_labels"] = self.soft_labels[i].tolist()
        return item


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


class NoFinalCheckpoint(TrainerCallback):
    """The Trainer saves a checkpoint when training ends; the run saves its own model right
    after, so that one would only cost time and disk (1.6 GB for SmolLM2 with AdamW state)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available; use device=auto")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@torch.inference_mode()
def predict_logits(
    model: Classifier, encoder: TextEncoder, texts: list[str], *, batch_size: int
) -> np.ndarray:
    """(N, L) logits in input order, from the ids the run's `TextEncoder` makes (the server's
    code path); batches are length-sorted so padding stays small."""
    model.eval()
    device = next(model.parameters()).device
    ids = encoder.encode(texts).ids
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.spec.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feeds = encoder.pad([ids[i] for i in idx])
        logits = model(
            input_ids=torch.from_numpy(feeds["input_ids"]).to(device),
            attention_mask=torch.from_numpy(feeds["attention_mask"]).to(device),
        )["logits"]
        out[idx] = logits.float().cpu().numpy()
    return out


def resolve_preprocessing(config: TrainConfig, tokenizer, template: str) -> Preprocessing:
    """The run's preprocessing, resolved once: every later stage reads this record."""
    return Preprocessing(
        max_length=config.max_length,
        truncation=resolved_truncation(config),  # type: ignore[arg-type]
        prompt_template=template,
        pad_token_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
    )


def tune_decision(dataset: Dataset, val_logits: np.ndarray, config: TrainConfig) -> DecisionRule:
    """The run's decision rule: per-label thresholds (multi-label) or the out-of-scope
    rejection threshold, both tuned on validation; plain argmax otherwise."""
    labels = list(dataset.label_names)
    if dataset.problem_type == "multi_label":
        thresholds = tune_label_thresholds(
            sigmoid(val_logits), dataset.label_matrix(dataset.validation)
        )
        return DecisionRule(labels=labels, problem_type="multi_label", thresholds=thresholds)
    oos = config.oos_label or (benchmark(config.dataset).oos_label if config.dataset else None)
    if oos and oos in labels:
        y_val = np.asarray(dataset.label_ids(dataset.validation))
        t = tune_rejection_threshold(softmax(val_logits), y_val, labels.index(oos))
        return DecisionRule(labels=labels, oos_label=oos, rejection_threshold=t)
    return DecisionRule(labels=labels)


def gold(dataset: Dataset, part: Split) -> np.ndarray:
    """(N,) label ids, or (N, L) 0/1 for multi-label."""
    if part.multi_label:
        return dataset.label_matrix(part)
    return np.asarray(dataset.label_ids(part))


def evaluate(
    model: Classifier,
    encoder: TextEncoder,
    rule: DecisionRule,
    dataset: Dataset,
    split: str,
    config: TrainConfig,
) -> tuple[dict[str, Any], Decisions]:
    """Metrics of one split under the run's decision rule, and the decisions themselves."""
    part = getattr(dataset, split)
    start = time.perf_counter()
    logits = predict_logits(model, encoder, part.texts, batch_size=config.eval_batch_size)
    decisions = rule.decide(logits)
    metrics = decision_metrics(rule, decisions, gold(dataset, part))
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "%s %s: %s (%d rows)",
        config.name,
        split,
        ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("accuracy", "micro_f1", "macro_f1") if k in metrics
        ),
        metrics["rows"],
    )
    return metrics, decisions


_LOGGERS = ("smallcls", "training", "transformers.trainer")
_saved_levels: dict[str, int] = {}


def _attach_log_file(path: Path) -> logging.Handler:
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


def _detach_log_file(handler: logging.Handler) -> None:
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
    `<name>.partial` for the rerun to resume."""
    final_dir = Path(runs_dir) / config.name
    run_dir = final_dir.with_name(final_dir.name + ".partial")
    check_writable(Path(runs_dir))
    resume = _resumable(run_dir, config)
    try:
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
        handler = _attach_log_file(run_dir / "train.log")
        try:
            if resume:
                log.info("%s: resuming from %s", config.name, run_dir)
            _train_into(config, run_dir, show_progress, resume=resume, callbacks=callbacks or [])
        finally:
            _detach_log_file(handler)
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
    return final_dir


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


def class_weights(dataset: Dataset, split: Split) -> torch.Tensor:
    """Inverse-frequency weights, n / (L * count) (sklearn's "balanced"); multi-label: the
    BCE pos_weight negatives / positives per label, capped at 50 for labels seen once."""
    if split.multi_label:
        y = dataset.label_matrix(split)
        pos = y.sum(axis=0)
        return torch.tensor(
            np.clip((len(y) - pos) / np.maximum(pos, 1), 1, 50), dtype=torch.float32
        )
    counts = Counter(split.labels)
    n, k = len(split), len(dataset.label_names)
    return torch.tensor(
        [n / (k * max(1, counts.get(name, 0))) for name in dataset.label_names], dtype=torch.float32
    )


def teacher_soft_labels(
    config: TrainConfig, texts: list[str], problem_type: str, labels: list[str]
) -> np.ndarray:
    """The teacher run's probabilities at the distillation temperature, (N, L), from the
    teacher's own recorded preprocessing."""
    teacher, tokenizer, _, teacher_labels = load_run(config.teacher_run)
    if teacher_labels != labels:
        raise ValueError(f"teacher labels {teacher_labels} != this dataset's {labels}")
    record = RunRecord.read(config.teacher_run)
    encoder = TextEncoder(tokenizer.backend_tokenizer, record.preprocessing)
    teacher.to(pick_device(config.device))
    logits = predict_logits(teacher, encoder, texts, batch_size=config.eval_batch_size)
    t = config.distill_temperature
    return sigmoid(logits / t) if problem_type == "multi_label" else softmax(logits / t)


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


def _data_source(dataset: Dataset, config: TrainConfig, run_dir: Path) -> DataSource:
    """Where the run's splits are, as files. When the test split was carved from the training
    file, all three splits are saved into the run (`data/*.jsonl`, standard columns), so export,
    load tests and reports read the very rows that were trained on and evaluated."""
    source = dataset.source or DataSource(
        name=dataset.name, train_path="", hub_dataset=config.hub_dataset
    )
    if source.test_path is not None:  # a carved validation split is not needed downstream
        return source
    final_dir = run_dir.with_name(run_dir.name.removesuffix(".partial")).resolve()
    (run_dir / "data").mkdir(exist_ok=True)
    paths = {}
    for split in ("train", "validation", "test"):
        write_split(run_dir / "data" / f"{split}.jsonl", getattr(dataset, split))
        paths[f"{split}_path"] = str(final_dir / "data" / f"{split}.jsonl")
    return dataclasses.replace(source, text_column="text", label_column="label", **paths)


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
        _fit(
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
    model.to(device)  # evaluate where it trained; fp32 weights, so CPU export matches
    _evaluate_and_save(config, run_dir, model, tokenizer, encoder, dataset, budget, device)


def _evaluate_and_save(
    config: TrainConfig,
    run_dir: Path,
    model: Classifier,
    tokenizer,
    encoder: TextEncoder,
    dataset: Dataset,
    budget: dict[str, Any],
    device: str,
) -> None:
    """Tune the decision rule on validation, evaluate test under it, and write the run: its
    metrics, its contract (`contract.json`) and its answer for every test row."""
    val_logits = predict_logits(
        model, encoder, dataset.validation.texts, batch_size=config.eval_batch_size
    )
    rule = tune_decision(dataset, val_logits, config)
    if config.test_rows:
        budget["subsampled"] = f"validation and test capped at {config.test_rows} rows"
    test_metrics, test_decisions = evaluate(model, encoder, rule, dataset, "test", config)
    metrics = {
        "train": budget,
        "validation": decision_metrics(
            rule, rule.decide(val_logits), gold(dataset, dataset.validation)
        ),
        "test": test_metrics,
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "environment.json", {**environment(), "device": device})
    write_predictions(run_dir, rule.answers(test_decisions))
    RunRecord(
        name=config.name,
        family=config.family,
        head=config.head,
        base_model=config.base_model,
        task=dataset.problem_type,  # type: ignore[arg-type]
        labels=list(dataset.label_names),
        preprocessing=encoder.preprocessing,
        decision=rule,
        dataset=_data_source(dataset, config, run_dir),
    ).write(run_dir)
    model.to("cpu")
    save_model_dir(run_dir / "model", model, tokenizer, dataset.label_names)


def _fit(
    config: TrainConfig,
    run_dir: Path,
    model: Classifier,
    tokenizer,
    encoder: TextEncoder,
    dataset: Dataset,
    train_split: Split,
    budget: dict[str, Any],
    device: str,
    *,
    show_progress: bool,
    resume: bool,
    callbacks: list[TrainerCallback],
) -> None:
    """Fine-tune in place with the HF Trainer (LoRA merged back after); fills `budget`."""
    texts, labels = list(train_split.texts), gold(dataset, train_split).tolist()
    soft = None
    if config.teacher_run:
        if config.unlabeled_path:
            extra = _unlabeled_texts(config.unlabeled_path)
            texts += extra
            blank = (
                [-1.0] * len(dataset.label_names) if dataset.problem_type == "multi_label" else -100
            )
            labels += [blank] * len(extra)
        soft = teacher_soft_labels(config, texts, dataset.problem_type, dataset.label_names)
        model.distill_temperature = config.distill_temperature
        model.distill_alpha = config.distill_alpha
        budget["distillation"] = {
            "teacher_run": config.teacher_run,
            "temperature": config.distill_temperature,
            "alpha": config.distill_alpha,
            "unlabeled_rows": len(texts) - len(train_split),
        }
    if config.class_weighting == "balanced":
        model.class_weights = class_weights(dataset, train_split)
    if config.lora_r:
        model.backbone = add_lora(
            model.backbone,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=config.lora_targets,
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # The run's own TextEncoder, so training sees the ids evaluation and the server see.
    ids = encoder.encode(texts).ids
    encodings = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
    train_data = EncodedTexts(encodings, labels, soft)
    use_cuda = device == "cuda"
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        group_by_length=config.group_by_length,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=10,
        # Checkpoints exist to resume a killed run; one is enough.
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        # torch.save, not safetensors: T5 encoders share their embedding between two
        # modules, which safetensors' save_file refuses in the Trainer's checkpoint path.
        save_safetensors=False,
        eval_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        fp16=use_cuda and not torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        disable_tqdm=not show_progress,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[*callbacks, NoFinalCheckpoint()],
    )
    checkpoint = get_last_checkpoint(args.output_dir) if resume else None
    if checkpoint:
        log.info("%s: resuming from checkpoint %s", config.name, checkpoint)
        budget["resumed_from"] = Path(checkpoint).name
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    with open(run_dir / "trainer_log.jsonl", "w", encoding="utf-8") as fh:
        for entry in trainer.state.log_history:
            fh.write(json.dumps(entry) + "\n")
    tokens = int(sum(len(ids) for ids in encodings["input_ids"]) * config.epochs)
    # Forward 2N FLOPs per token, backward 4N (Kaplan et al. 2020, attention ignored); with
    # LoRA the frozen weights need no weight gradients, so backward is about 2N.
    per_token = 4 * total if config.lora_r else 6 * total
    budget.update(
        seconds=round(time.perf_counter() - start, 1),
        examples_seen=int(len(train_data) * config.epochs),
        tokens_seen=tokens,
        estimated_flops=float(per_token * tokens),
        flops_formula="4 x params x tokens (LoRA)" if config.lora_r else "6 x params x tokens",
        trainable_parameters=trainable,
        final_loss=result.training_loss,
        optimizer_steps=trainer.state.global_step,
    )
    if config.lora_r:
        budget["lora"] = {"r": config.lora_r, "alpha": config.lora_alpha}
    if "mntp" in budget:
        # LoRA (4N per token) on the whole decoder, which MNTP adapts before the cut to K layers.
        mntp = budget["mntp"]
        budget["estimated_flops"] += float(4 * mntp["parameters"] * mntp["tokens_seen"])
    log.info(
        "%s: trained in %.0f s, loss %.4f", config.name, budget["seconds"], result.training_loss
    )
    model.backbone = merge_lora(model.backbone)


def _unlabeled_texts(path: str) -> list[str]:
    return read_text_column(path)
