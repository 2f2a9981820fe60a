"""One causal LM fine-tuned on several classification tasks at once, told apart by task
prompts; the comparison point for one encoder per task.

Each task's texts go into its own prompt ("Review: {text}\\nSentiment:") and the model scores
label words after it, as in the label-word head. The label set is the union of the tasks'
label WORDS (tasks that share a word, e.g. SST-2 and IMDB's " positive", share its row), so
training is next-token cross-entropy over those words, as instruction tuning would do over the
whole vocabulary. Each task is evaluated on its own words only.

The run records each task's contract (core/manifest.py TaskRule: prompt, label words, logit columns,
decision rule) in `<run>/multitask.json` with the joint preprocessing, and its answer for
every test row in `<run>/tasks/<task>/test_predictions.jsonl`: export copies the contract into
one manifest, and the served answers are checked against those predictions per task.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from core.config import TrainConfig, to_dict
from core.data import Dataset, Split, dataset_for
from core.decision import DecisionRule
from core.manifest import MULTITASK_NAME, TaskRule
from core.metrics import classification_metrics
from core.preprocessing import Preprocessing, TextEncoder
from core.run_record import write_predictions
from training import pretrained
from training.evaluate import predict_logits
from training.families import ModelSpec, build_classifier
from training.fit import fit, pick_device
from training.run_dir import COMPLETE, environment, save_model_dir, write_json
from training.tokenize import label_token_ids, load_tokenizer
from training.train import attach_log_file, detach_log_file

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # a benchmark dataset name
    prompt_template: str
    label_words: dict[str, str]  # the task's label name -> word


def _prefill(tokenizer, split: Split, task: Task, config: TrainConfig) -> list[str]:
    """The task's prompts around its texts; tokenized later with the plain "{text}" template,
    truncated from the left so the prompt's question survives."""
    preprocessing = Preprocessing(
        max_length=config.max_length, truncation="tail", prompt_template=task.prompt_template
    )
    return TextEncoder(tokenizer.backend_tokenizer, preprocessing).prompts(split.texts)[0]


def task_rule(task: Task, dataset: Dataset, words: list[str]) -> TaskRule:
    """The task's contract: its prompt, its words' rows among the union `words`, and softmax
    argmax over its own labels (as it is evaluated)."""
    return TaskRule(
        name=task.name,
        prompt_template=task.prompt_template,
        label_words={name: task.label_words[name] for name in dataset.label_names},
        columns=[words.index(task.label_words[name]) for name in dataset.label_names],
        decision=DecisionRule(labels=list(dataset.label_names)),
        dataset=dataset.source.to_dict() if dataset.source else {"name": task.name},
    )


def train_multitask(
    tasks: list[Task], base: TrainConfig, runs_dir: Path | str, *, show_progress: bool = False
) -> Path:
    """Train `<runs_dir>/<base.name>` on every task's (subsampled) training set; metrics.json
    holds one entry per task. `base` gives the model and the budget (its dataset and
    label_words are ignored); train_rows and test_rows apply per task."""
    words = list(dict.fromkeys(w for t in tasks for w in t.label_words.values()))
    config = dataclasses.replace(
        base,
        family="causal_lm",
        head="label_words",
        label_words={w: w for w in words},
        prompt_template="{text}",
        zero_shot=False,
        few_shot_k=0,
        dataset=None,
        truncation="tail",
    )
    final_dir = Path(runs_dir) / config.name
    run_dir = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    handler = attach_log_file(run_dir / "train.log")
    try:
        torch.set_num_threads(config.threads)
        set_seed(config.seed)
        device = pick_device(config.device)
        write_json(run_dir / "config.json", to_dict(config))
        write_json(run_dir / "tasks.json", [dataclasses.asdict(t) for t in tasks])
        source = pretrained.resolve(config.base_model)
        tokenizer = load_tokenizer(source)
        per_task: dict[str, tuple[Dataset, Split]] = {}
        texts: list[str] = []
        labels: list[str] = []
        for task in tasks:
            dataset = dataset_for(dataclasses.replace(base, dataset=task.name))
            if dataset.problem_type != "single_label":
                raise ValueError(f"{task.name}: multi-task training takes single-label tasks")
            train_split = dataset.train.subsample(base.train_rows, base.seed)
            per_task[task.name] = (dataset, train_split)
            texts += _prefill(tokenizer, train_split, task, config)
            labels += [task.label_words[name] for name in train_split.labels]
        union = Split(texts, labels)
        joint = Dataset("multitask", words, union, union, union)
        spec = ModelSpec(
            family="causal_lm",
            head="label_words",
            num_labels=len(words),
            label_token_ids=label_token_ids(tokenizer, words, config.label_words),
        )
        model = build_classifier(source, spec)
        if model.backbone.config.pad_token_id is None:
            model.backbone.config.pad_token_id = tokenizer.pad_token_id
        budget: dict[str, Any] = {
            "rows": len(union),
            "device": device,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tasks": {t.name: len(per_task[t.name][1]) for t in tasks},
        }
        # Prompts are filled per task above; the joint encoder only truncates from the left.
        encoder = TextEncoder(
            tokenizer.backend_tokenizer,
            Preprocessing(
                max_length=config.max_length,
                truncation="tail",
                pad_token_id=tokenizer.pad_token_id,
                pad_token=tokenizer.pad_token,
            ),
        )
        fit(
            config,
            run_dir,
            model,
            tokenizer,
            encoder,
            joint,
            union,
            budget,
            device,
            show_progress=show_progress,
            resume=False,
            callbacks=[],
        )
        model.to(device)
        metrics: dict[str, Any] = {"train": budget, "tasks": {}}
        rules: list[TaskRule] = []
        for task in tasks:
            dataset, _ = per_task[task.name]
            rule = task_rule(task, dataset, words)
            logits = rule.select(
                predict_logits(
                    model,
                    encoder,
                    _prefill(tokenizer, dataset.test, task, config),
                    batch_size=config.eval_batch_size,
                )
            )  # the task's own words only
            decisions = rule.decision.decide(logits)
            result = classification_metrics(
                dataset.label_ids(dataset.test),
                decisions.label_ids.tolist(),
                dataset.label_names,
            )
            log.info("%s %s: accuracy %.4f", config.name, task.name, result["accuracy"])
            metrics["tasks"][task.name] = {"test": result}
            task_dir = run_dir / "tasks" / task.name
            task_dir.mkdir(parents=True)
            write_predictions(task_dir, rule.decision.answers(decisions))
            rules.append(rule)
        write_json(
            run_dir / MULTITASK_NAME,
            {
                "preprocessing": encoder.preprocessing.to_dict(),
                "tasks": [r.to_dict() for r in rules],
            },
        )
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "environment.json", {**environment(), "device": device})
        model.to("cpu")
        save_model_dir(run_dir / "model", model, tokenizer, words, base_model=base.base_model)
    finally:
        detach_log_file(handler)
    (run_dir / COMPLETE).write_text("ok\n")
    shutil.rmtree(final_dir, ignore_errors=True)
    run_dir.rename(final_dir)
    return final_dir
