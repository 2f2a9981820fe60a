"""Accuracy benchmark: model families x benchmark datasets, each cell trained and evaluated
under a stated budget, in one table beside the published reference results.

    python -m bench.accuracy --out bench_out/accuracy     # gpu budget on CUDA, else cpu
    python -m bench.accuracy --budget cpu --datasets trec,sst2 --families minilm
    python -m bench.accuracy --budget micro                                 # proves it runs

Budgets (per cell; the table repeats them so no figure is read without its budget):
- gpu:   the full training set (AG News: the 5,000-row subsample, all that ships), full
         validation and test splits, per-dataset epochs (BUDGETS below).
- cpu:   a seeded 2,000-row training subsample, validation and test capped at 1,000 rows,
         IMDB cut to 256 tokens: figures are NOT comparable to full-data results.
- cpu-full: the full training sets as on gpu, with fewer epochs (CPU_FULL_EPOCHS) and inputs
         cut to 256 tokens, so MiniLM's targets can be checked on 2 CPU cores.
- micro: 64 training rows, 64 test rows, 1 epoch, 32 tokens: checks the grid runs, nothing else.

Every cell is an ordinary training run (`runs/<dataset>-<family>/`), reused when a complete
run of the same config exists, so a stopped benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.accuracy_plots import write_plots
from core.config import TrainConfig, to_dict
from core.data import BENCHMARKS

log = logging.getLogger("bench.accuracy")

# Family presets: TrainConfig fields. Learning rates as measured for the demo (configs/demo.yaml):
# MiniLM 1e-4, SmolLM2 full fine-tuning 1e-4; LoRA needs a larger step (5e-4 on all linears).
FAMILIES: dict[str, dict[str, Any]] = {
    "minilm": dict(family="encoder", base_model="minilm-l6", learning_rate=1e-4),
    "smollm2-last": dict(
        family="causal_lm", head="last_token", base_model="smollm2-135m", learning_rate=1e-4
    ),
    "smollm2-lora": dict(
        family="causal_lm",
        head="last_token",
        base_model="smollm2-135m",
        learning_rate=5e-4,
        lora_r=16,
        lora_alpha=32,
    ),
    "smollm2-zeroshot": dict(
        family="causal_lm", head="label_words", base_model="smollm2-135m", zero_shot=True
    ),
    "smollm2-fewshot": dict(
        family="causal_lm",
        head="label_words",
        base_model="smollm2-135m",
        zero_shot=True,
        few_shot_k=2,
    ),
    # Extracted encoders: "smollm2-bidir-l{K}" and "smollm2-bidir-l{K}-mntp" for any K.
    # Distillation: "minilm-distilled" (teacher: this dataset's smollm2-last cell).
}

# Label words and prompts for the label-word baselines: each label's first token must differ.
PROMPTS: dict[str, tuple[str, dict[str, str]]] = {
    "sst2": ("Review: {text}\nSentiment:", {"negative": " negative", "positive": " positive"}),
    "imdb": ("Review: {text}\nSentiment:", {"negative": " negative", "positive": " positive"}),
    "emotion": (
        "Tweet: {text}\nEmotion:",
        {
            "sadness": " sadness",
            "joy": " joy",
            "love": " love",
            "anger": " anger",
            "fear": " fear",
            "surprise": " surprise",
        },
    ),
    "ag_news": (
        "Article: {text}\nTopic:",
        {"World": " world", "Sports": " sports", "Business": " business", "Sci/Tech": " science"},
    ),
    "trec": (
        "Question: {text}\nThe answer is a:",
        {
            "ABBR": " abbreviation",
            "DESC": " description",
            "ENTY": " thing",
            "HUM": " person",
            "LOC": " place",
            "NUM": " number",
        },
    ),
}

# Epochs on the full data (gpu budget): small label-rich sets need more passes.
GPU_EPOCHS = {
    "sst2": 3,
    "banking77": 8,
    "emotion": 4,
    "trec": 5,
    "ag_news": 5,
    "goemotions": 4,
    "clinc150": 6,
    "imdb": 2,
}

# Epochs for full training sets on 2 CPU cores (budget cpu-full): one to six passes, so that
# MiniLM covers every row of the six target datasets in about two hours. SST-2 got a second
# pass after the first reached 89.8% (target 90%); the second reached 89.8% too, with
# validation accuracy up from 93.8% to 95.3%.
CPU_FULL_EPOCHS = {
    "sst2": 2,
    "banking77": 6,
    "emotion": 2,
    "trec": 3,
    "ag_news": 2,
    "goemotions": 2,
    "clinc150": 4,
    "imdb": 1,
}


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    train_rows: int | None
    test_rows: int | None
    epochs: float | dict[str, float] | None  # None = GPU_EPOCHS; a dict = per dataset
    max_length_cap: int | None
    mntp_steps: int
    note: str


BUDGETS = {
    "gpu": Budget("gpu", None, None, None, None, 300, "full train/validation/test"),
    "cpu": Budget(
        "cpu", 2000, 1000, 2, 256, 100, "CPU subsample: 2,000 train rows, <=1,000 val/test rows"
    ),
    "cpu-full": Budget(
        "cpu-full",
        None,
        None,
        CPU_FULL_EPOCHS,
        256,
        100,
        "full training sets, fewer epochs (CPU_FULL_EPOCHS), full test sets, <=256 tokens",
    ),
    "micro": Budget("micro", 64, 64, 1, 32, 2, "micro: 64 train / 64 test rows, 32 tokens"),
}


def _epochs(budget: Budget, dataset: str) -> float:
    if isinstance(budget.epochs, dict):
        return budget.epochs[dataset]
    return budget.epochs or GPU_EPOCHS[dataset]


def cell_config(dataset: str, family: str, budget: Budget, runs_dir: Path) -> TrainConfig | None:
    """The TrainConfig of one cell, or None when the family does not apply to the dataset."""
    info = BENCHMARKS[dataset]
    fields: dict[str, Any]
    if family in FAMILIES:
        fields = dict(FAMILIES[family])
    elif family.startswith("smollm2-bidir-l"):
        k = family.removeprefix("smollm2-bidir-l").removesuffix("-mntp")
        fields = dict(
            family="extracted_encoder",
            base_model="smollm2-135m",
            layers=int(k),
            learning_rate=1e-4,
        )
        if family.endswith("-mntp"):
            fields.update(mntp_steps=budget.mntp_steps, lora_r=0)
    elif family == "minilm-distilled":
        teacher = runs_dir / f"{dataset}-smollm2-last"
        fields = dict(
            FAMILIES["minilm"], teacher_run=str(teacher), distill_alpha=0.5, distill_temperature=2.0
        )
    else:
        raise ValueError(f"unknown family {family!r}")
    if fields.get("head") == "label_words":
        if dataset not in PROMPTS:
            return None  # no natural label words (77/150 intents, multi-label)
        template, words = PROMPTS[dataset]
        fields.update(prompt_template=template, label_words=words)
    max_length = info.max_length
    if fields.get("few_shot_k"):
        max_length = max(max_length, 384)  # room for k examples per class
    if budget.max_length_cap:
        max_length = min(max_length, budget.max_length_cap)
    batch = 16 if max_length > 128 else 32
    return TrainConfig(
        name=f"{dataset}-{family}",
        dataset=dataset,
        train_rows=budget.train_rows,
        test_rows=budget.test_rows,
        epochs=_epochs(budget, dataset),
        max_length=max_length,
        batch_size=batch,
        **fields,
    )


def headline(dataset: str, test: dict[str, Any]) -> dict[str, Any]:
    """The metric the published reference uses, plus macro-F1 and the extra figures."""
    info = BENCHMARKS[dataset]
    row: dict[str, Any] = {"metric": info.metric, "macro_f1": test.get("macro_f1")}
    if info.metric == "in_scope_accuracy":
        row["ours"] = test["oos"]["in_scope_accuracy"]
        row["extra"] = (
            f"OOS recall {test['oos']['oos_recall']:.3f} (threshold "
            f"{test['oos']['rejection_threshold']:.2f}); without rejection: in-scope "
            f"{test['oos_argmax']['in_scope_accuracy']:.3f}, OOS recall "
            f"{test['oos_argmax']['oos_recall']:.3f}"
        )
    elif info.metric == "macro_f1":
        row["ours"] = test["macro_f1"]
        row["extra"] = f"micro-F1 {test['micro_f1']:.3f}, exact match {test['exact_match']:.3f}"
    else:
        row["ours"] = test["accuracy"]
        row["extra"] = ""
    return row


def _reusable(run_dir: Path, config: TrainConfig) -> bool:
    path = run_dir / "config.json"
    return (
        (run_dir / "COMPLETE").is_file()
        and path.is_file()
        and (json.loads(path.read_text()) == to_dict(config))
    )


def run_cell(
    config: TrainConfig, runs_dir: Path, budget: Budget, *, show_progress: bool = True
) -> dict[str, Any]:
    from training.train import train

    run_dir = runs_dir / config.name
    if not _reusable(run_dir, config):
        # A cell trains for up to an hour on CPU: its bar (steps, rate, time left) is the
        # only sign it is alive.
        run_dir = train(config, runs_dir, show_progress=show_progress)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    spent = metrics["train"]
    info = BENCHMARKS[config.dataset or ""]
    head = headline(config.dataset or "", metrics["test"])
    if config.teacher_run:
        # How much of the teacher's figure the student keeps, at the student's size.
        teacher = json.loads((Path(config.teacher_run) / "metrics.json").read_text())
        ours, theirs = head["ours"], headline(config.dataset or "", teacher["test"])["ours"]
        keeps = (
            f"keeps {ours / theirs * 100:.1f}% of the teacher's {theirs:.4f} with "
            f"{spent['parameters'] / teacher['train']['parameters'] * 100:.0f}% of its parameters"
        )
        head["extra"] = "; ".join(x for x in (head["extra"], keeps) if x)
    return {
        "dataset": config.dataset,
        "family": config.name.removeprefix(f"{config.dataset}-"),
        **head,
        "parameters": spent["parameters"],
        "reference": info.reference_value,
        "reference_text": info.reference,
        "train_rows": spent["rows"],
        "test_rows": metrics["test"]["rows"],
        "epochs": 0 if config.zero_shot else config.epochs,
        "max_length": config.max_length,
        # MNTP's adaptation is part of the cell's cost.
        "train_seconds": spent.get("seconds", 0.0) + spent.get("mntp", {}).get("seconds", 0.0),
        "tokens_seen": spent.get("tokens_seen", 0) + spent.get("mntp", {}).get("tokens_seen", 0),
        "estimated_flops": spent.get("estimated_flops", 0),
        "mntp_steps": spent.get("mntp", {}).get("steps", 0),
        "budget": budget.name,
        "budget_note": budget.note + (f"; {info.note}" if info.note else ""),
        "device": spent.get("device"),
        "run": str(run_dir),
    }


def run_multitask(
    datasets: list[str],
    budget: Budget,
    runs_dir: Path,
    overrides: dict[str, Any],
    *,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """One SmolLM2 fine-tuned on every selected dataset that has label words, with task
    prompts: a row per dataset, to set beside one encoder per task. The budget is the whole
    run's (all tasks together)."""
    from training.multitask import Task, train_multitask

    names = [d for d in datasets if d in PROMPTS]
    if not names:
        return []
    tasks = [Task(d, *PROMPTS[d]) for d in names]
    base = TrainConfig(
        **{
            **dict(
                name="multitask-smollm2",
                family="causal_lm",
                head="last_token",
                base_model="smollm2-135m",
                learning_rate=1e-4,
                train_rows=budget.train_rows,
                test_rows=budget.test_rows,
                epochs=budget.epochs if isinstance(budget.epochs, (int, float)) else 3,
                max_length=min(256, budget.max_length_cap or 256),
                batch_size=16,
            ),
            **overrides,
        }
    )
    print(f"multitask: one SmolLM2 on {', '.join(names)} ...", flush=True)
    try:
        run = train_multitask(tasks, base, runs_dir, show_progress=show_progress)
    except Exception as exc:  # keep the grid's figures
        log.exception("multitask failed")
        error = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return [{"dataset": d, "family": "smollm2-multitask", "error": error} for d in names]
    metrics = json.loads((run / "metrics.json").read_text())
    spent = metrics["train"]
    rows = []
    for d in names:
        test = metrics["tasks"][d]["test"]
        rows.append(
            {
                "dataset": d,
                "family": "smollm2-multitask",
                **headline(d, test),
                "reference": BENCHMARKS[d].reference_value,
                "reference_text": BENCHMARKS[d].reference,
                "parameters": spent["parameters"],
                "train_rows": spent["tasks"][d],
                "test_rows": test["rows"],
                "epochs": base.epochs,
                "max_length": base.max_length,
                "train_seconds": spent["seconds"],
                "tokens_seen": spent["tokens_seen"],
                "estimated_flops": spent["estimated_flops"],
                "mntp_steps": 0,
                "budget": budget.name,
                "budget_note": f"{budget.note}; one run for {len(names)} tasks (cost shared)",
                "device": spent["device"],
                "run": str(run),
            }
        )
    return rows


def _fmt(value: Any, pct: bool) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value * 100:.2f}%" if pct else f"{value:.3f}"
    return str(value)


def write_table(rows: list[dict[str, Any]], out: Path, command: str, budget: Budget) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order
    with open(out / "accuracy.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Accuracy benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Budget `{budget.name}`: {budget.note}. "
        + (
            "Subsampled: these figures are NOT comparable to the full-data published results."
            if budget.train_rows is not None
            else "Full training sets (AG News: the 5,000-row subsample, all that ships)."
        ),
        "",
        "| dataset | family | metric | ours | published (BERT-base class) | macro-F1 | "
        "params (M) | train rows | test rows | epochs | max len | train s | tokens seen | "
        "est. FLOPs | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['family']} | | failed: {r['error']} |" + " |" * 11)
            continue
        pct = r["metric"] != "macro_f1"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    r["family"],
                    r["metric"],
                    _fmt(r["ours"], pct),
                    _fmt(r["reference"], pct),
                    _fmt(r["macro_f1"], False),
                    f"{r.get('parameters', 0) / 1e6:.1f}",
                    f"{r['train_rows']:,}",
                    f"{r['test_rows']:,}",
                    _fmt(r["epochs"], False),
                    str(r["max_length"]),
                    f"{r['train_seconds']:.0f}",
                    f"{r['tokens_seen']:,}",
                    f"{r['estimated_flops']:.2e}",
                    "; ".join(x for x in (r["extra"], r["budget_note"]) if x),
                ]
            )
            + " |"
        )
    lines += ["", "Published references (from ../shared/datasets/README.md, approximate):", ""]
    for name in sorted({r["dataset"] for r in rows}):
        lines.append(f"- {name}: {BENCHMARKS[name].reference}")
    lines.append("")
    lines.append(
        "Estimated FLOPs: 6 x parameters x training tokens (4 x for LoRA: no weight gradients "
        "for frozen weights), plus MNTP's; attention and evaluation are not counted."
    )
    path = out / "accuracy.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if write_plots(rows, out, command) is None:
        log.warning("accuracy.html not written: plotly is missing (pip install -e '.[report]')")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--budget",
        choices=["auto", *sorted(BUDGETS)],
        default="auto",
        help="auto: gpu when CUDA is available, else cpu",
    )
    parser.add_argument("--datasets", default=",".join(BENCHMARKS), help="comma-separated")
    parser.add_argument(
        "--families",
        default="minilm,smollm2-last,smollm2-lora,smollm2-zeroshot,smollm2-fewshot,"
        "smollm2-bidir-l12,smollm2-bidir-l12-mntp",
        help="comma-separated; also smollm2-bidir-l{K}[-mntp], minilm-distilled, "
        "smollm2-multitask (one model for all datasets with label words)",
    )
    parser.add_argument(
        "--layers", default="", help="K sweep: adds smollm2-bidir-l{K} and -mntp for each K"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field in every cell, e.g. device=cpu",
    )
    parser.add_argument("--quiet", action="store_true", help="no training progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from core.config import parse_overrides

    if args.budget == "auto":
        import torch

        args.budget = "gpu" if torch.cuda.is_available() else "cpu"
    budget = BUDGETS[args.budget]
    datasets = [d for d in args.datasets.split(",") if d]
    families = [f for f in args.families.split(",") if f]
    for k in [k for k in args.layers.split(",") if k]:
        families += [f"smollm2-bidir-l{k}", f"smollm2-bidir-l{k}-mntp"]
    if "minilm-distilled" in families and "smollm2-last" in families:
        families.remove("minilm-distilled")
        families.append("minilm-distilled")  # after its teacher
    unknown = sorted(set(datasets) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {sorted(BENCHMARKS)}")
    overrides = parse_overrides(args.set)
    runs_dir = args.out / "runs"
    command = "python -m bench.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    cells = [(d, f) for d in datasets for f in families]
    start = time.perf_counter()
    for i, (dataset, family) in enumerate(cells, 1):
        if family == "smollm2-multitask":
            continue  # one run over all datasets, after the grid
        config = cell_config(dataset, family, budget, runs_dir)
        if config is None:
            print(f"[{i}/{len(cells)}] {dataset} x {family}: not applicable, skipped", flush=True)
            continue
        if overrides:
            config = dataclasses.replace(config, **overrides)
        print(f"[{i}/{len(cells)}] {dataset} x {family} ...", flush=True)
        try:
            row = run_cell(config, runs_dir, budget, show_progress=not args.quiet)
        except Exception as exc:  # one failed cell must not lose the others' figures
            log.exception("%s x %s failed", dataset, family)
            row = {"dataset": dataset, "family": family, "error": str(exc).splitlines()[0][:120]}
        else:
            print(
                f"[{i}/{len(cells)}] {dataset} x {family}: {row['metric']} {row['ours']:.4f} "
                f"({row['train_seconds']:.0f} s; grid {time.perf_counter() - start:.0f} s so far)",
                flush=True,
            )
        rows.append(row)
        write_table(rows, args.out, command, budget)  # after every cell: a stop loses nothing
    if "smollm2-multitask" in families:
        rows += run_multitask(datasets, budget, runs_dir, overrides, show_progress=not args.quiet)
    path = write_table(rows, args.out, command, budget)
    print(path.read_text())
    print(f"table: {path} ({time.perf_counter() - start:.0f} s)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
