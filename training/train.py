"""One training run: data -> fine-tuned classifier -> run directory with metrics.

Uses the Hugging Face Trainer (seeds, schedules, bf16/fp16 on CUDA, progress bars) rather
than a hand-written loop.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from smallcls import pretrained
from smallcls.config import TrainConfig, to_dict
from smallcls.data import Dataset, load_dataset, load_hub_dataset
from smallcls.manifest import fill_template
from smallcls.metrics import classification_metrics
from training.families import Classifier, ModelSpec, build_classifier
from training.run_dir import COMPLETE, environment, save_model_dir, write_json
from training.tokenize import label_token_ids, load_tokenizer

log = logging.getLogger(__name__)


class EncodedTexts(torch.utils.data.Dataset):
    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int]) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": self.encodings["input_ids"][i],
            "attention_mask": self.encodings["attention_mask"][i],
            "labels": self.labels[i],
        }


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available; use device=auto")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@torch.inference_mode()
def predict_logits(
    model: Classifier,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int,
    template: str = "{text}",
) -> np.ndarray:
    """(N, L) logits in input order; batches are length-sorted so padding stays small."""
    model.eval()
    device = next(model.parameters()).device
    prompts = fill_template(template, texts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = np.zeros((len(prompts), model.spec.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in idx],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(device)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"]
        out[idx] = logits.float().cpu().numpy()
    return out


def evaluate(model: Classifier, tokenizer, dataset: Dataset, split: str, config: TrainConfig):
    part = getattr(dataset, split)
    start = time.perf_counter()
    logits = predict_logits(
        model,
        tokenizer,
        part.texts,
        max_length=config.max_length,
        batch_size=config.eval_batch_size,
        template=config.prompt_template,
    )
    metrics = classification_metrics(
        dataset.label_ids(part), logits.argmax(-1).tolist(), dataset.label_names
    )
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "%s %s: accuracy %.4f, macro-F1 %.4f (%d rows)",
        config.name,
        split,
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["rows"],
    )
    return metrics


def dataset_for(config: TrainConfig) -> Dataset:
    """The config's dataset: local files, or a hub dataset name when one is given."""
    if config.hub_dataset:
        return load_hub_dataset(config.hub_dataset, seed=config.seed)
    return load_dataset(
        config.train_path,
        config.test_path,
        validation_path=config.validation_path,
        val_fraction=config.val_fraction,
        max_val_rows=config.max_val_rows,
        seed=config.seed,
    )


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("smallcls", "training", "transformers.trainer"):
        logging.getLogger(name).addHandler(handler)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    for name in ("smallcls", "training", "transformers.trainer"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def train(config: TrainConfig, runs_dir: Path | str, *, show_progress: bool = True) -> Path:
    """Train one model; returns its complete run directory `<runs_dir>/<config.name>`."""
    final_dir = Path(runs_dir) / config.name
    run_dir = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    handler = _attach_log_file(run_dir / "train.log")
    try:
        _train_into(config, run_dir, show_progress)
    finally:
        _detach_log_file(handler)
    (run_dir / COMPLETE).write_text("ok\n")
    shutil.rmtree(final_dir, ignore_errors=True)
    run_dir.rename(final_dir)
    return final_dir


def _train_into(config: TrainConfig, run_dir: Path, show_progress: bool) -> None:
    torch.set_num_threads(config.threads)
    set_seed(config.seed)
    device = pick_device(config.device)
    write_json(run_dir / "config.json", to_dict(config))

    dataset = dataset_for(config)
    train_split = dataset.train.subsample(config.train_rows, config.seed)
    log.info(
        "%s: %d train / %d validation / %d test rows, labels %s",
        config.name,
        len(train_split),
        len(dataset.validation),
        len(dataset.test),
        dataset.label_names,
    )

    source = pretrained.resolve(config.base_model)
    tokenizer = load_tokenizer(source, head=config.head)
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
    )
    model = build_classifier(source, spec)
    if model.backbone.config.pad_token_id is None:
        model.backbone.config.pad_token_id = tokenizer.pad_token_id
    parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s/%s on %s, %.1fM parameters",
        config.name,
        config.family,
        config.head,
        pretrained.describe(config.base_model),
        parameters / 1e6,
    )

    budget: dict[str, Any] = {"rows": len(train_split), "device": device, "parameters": parameters}
    start = time.perf_counter()
    if config.zero_shot:
        budget.update(seconds=0.0, examples_seen=0, tokens_seen=0, zero_shot=True)
    else:
        encodings = tokenizer(
            fill_template(config.prompt_template, train_split.texts),
            truncation=True,
            max_length=config.max_length,
        )
        label_index = {name: i for i, name in enumerate(dataset.label_names)}
        train_data = EncodedTexts(encodings, [label_index[x] for x in train_split.labels])
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
            save_strategy="no",
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
        )
        result = trainer.train()
        with open(run_dir / "trainer_log.jsonl", "w", encoding="utf-8") as fh:
            for entry in trainer.state.log_history:
                fh.write(json.dumps(entry) + "\n")
        tokens = sum(len(ids) for ids in encodings["input_ids"])
        budget.update(
            seconds=round(time.perf_counter() - start, 1),
            examples_seen=int(len(train_data) * config.epochs),
            tokens_seen=int(tokens * config.epochs),
            final_loss=result.training_loss,
        )
        log.info(
            "%s: trained in %.0f s, loss %.4f", config.name, budget["seconds"], result.training_loss
        )
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

    model.to(device)  # evaluate where it trained; fp32 weights, so CPU export matches
    metrics = {
        "train": budget,
        "validation": evaluate(model, tokenizer, dataset, "validation", config),
        "test": evaluate(model, tokenizer, dataset, "test", config),
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "environment.json", {**environment(), "device": device})
    model.to("cpu")
    save_model_dir(run_dir / "model", model, tokenizer, dataset.label_names)
