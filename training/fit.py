"""Fine-tuning with the Hugging Face Trainer (seeds, schedules, bf16/fp16 on CUDA, checkpoints
that resume, progress bars) rather than a hand-written loop: class weights, LoRA merged back,
and distillation from a teacher run's soft labels."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from core.config import TrainConfig
from core.data import Dataset, Split, read_text_column
from core.decision import sigmoid, softmax
from core.preprocessing import TextEncoder
from core.run_record import RunRecord
from training import distributed
from training.adapters import add_lora, merge_lora
from training.evaluate import gold, predict_logits
from training.families import Classifier
from training.run_dir import load_run

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


def fit(
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
    processes = distributed.current()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        # Each process takes its share of the config's (global) batch; the Trainer's
        # data loader gives each one its own slice of every batch, so a step sees the same
        # rows with any number of processes.
        per_device_train_batch_size=distributed.per_process_batch(
            config.batch_size, processes.world_size
        ),
        ddp_backend=distributed.ddp_backend(device, processes.world_size),
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
    if processes.is_main:  # every process holds the same history (losses averaged over all)
        with open(run_dir / "trainer_log.jsonl", "w", encoding="utf-8") as fh:
            for entry in trainer.state.log_history:
                fh.write(json.dumps(entry) + "\n")
    tokens = int(sum(len(ids) for ids in encodings["input_ids"]) * config.epochs)
    # Forward 2N FLOPs per token, backward 4N (Kaplan et al. 2020, attention ignored); with
    # LoRA the frozen weights need no weight gradients, so backward is about 2N.
    per_token = 4 * total if config.lora_r else 6 * total
    # All processes together: each row is seen once per epoch by one of them (the few rows
    # accelerate repeats to give every process a last batch are not counted).
    budget.update(
        seconds=round(time.perf_counter() - start, 3),  # ms: a tiny run is not "0 s"
        processes=processes.world_size,
        batch_size=config.batch_size,
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
