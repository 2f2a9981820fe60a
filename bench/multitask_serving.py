"""One multi-task causal LM serving several tasks against one encoder per task: accuracy per
task, memory for all tasks served, and throughput and cost of a mixed stream.

Three steps, each its own command (each fits a turn of the shared benchmark lock):

    python -m bench.multitask_serving train --out /tmp/mt --tasks sst2,trec,ag_news \\
        --train-rows 300 --test-rows 500           # SmolLM2 on every task, exported
    python -m bench.multitask_serving encoders --out /tmp/mt --tasks sst2,trec,ag_news \\
        --train-rows 300 --test-rows 500           # one MiniLM per task, exported
    python -m bench.multitask_serving measure --out /tmp/mt --tasks sst2,trec,ag_news \\
        --users 4 --seconds 12 --rounds 3          # figures in docs/multitask.md

`measure` serves each setup with `bentoml serve` (service/launch.py), one after the other and
alternating (A B A B ...), and sends a mixed stream: each request is one test text of a task
drawn at random (seeded), with `"task"` for the multi-task model, or to that task's own model.
It reports the median over rounds of texts/s, p50/p95 latency, the server's resident memory
(its process tree, after the stream) and $ per million at that rate on the price table's
measured instance (reports/cost.py). It writes them, with each task's accuracy from the
served models' manifests, to `<out>/multitask_measure.json` (core/multitask_measure.py), and
prints that record's medians; `smallcls report --from ... --multitask <that file>` puts it in
the answer page. A closed loop of `--users` clients in threads: the same shape as the load
tests' users, without Locust's process (the figures are ratios measured on one machine in one
command, as the load tests' are).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from core.data import dataset_for
from core.manifest import MANIFEST_NAME, Manifest
from core.multitask_measure import (
    MultitaskMeasure,
    ServedModel,
    SetupResult,
    StreamRound,
    TaskAccuracy,
)
from reports.cost import load_prices, usd_per_million
from service.launch import ServerProcess

MULTI_NAME = "multitask-smollm2"


def _tasks(value: str) -> list[str]:
    return [t for t in value.split(",") if t]


def train_multitask_model(args: argparse.Namespace) -> None:
    """SmolLM2 with label words on every task (training/multitask.py), exported fp32 + int8."""
    from bench.accuracy import PROMPTS
    from core.config import TrainConfig
    from export.onnx_export import export_model
    from training.multitask import Task, train_multitask

    tasks = [Task(t, *PROMPTS[t]) for t in args.tasks]
    base = TrainConfig(
        name=MULTI_NAME,
        family="causal_lm",
        head="last_token",
        base_model=args.base_model,
        learning_rate=args.learning_rate,
        train_rows=args.train_rows,
        test_rows=args.test_rows,
        epochs=args.epochs,
        max_length=args.max_length,
        batch_size=16,
        threads=args.threads,
    )
    start = time.perf_counter()
    run = args.out / "runs" / MULTI_NAME
    if not (run / "COMPLETE").is_file() or args.fresh:
        run = train_multitask(tasks, base, args.out / "runs", show_progress=False)
    trained = time.perf_counter()
    metrics = json.loads((run / "metrics.json").read_text())
    for task in args.tasks:
        print(f"run {MULTI_NAME} {task}: accuracy {metrics['tasks'][task]['test']['accuracy']:.4f}")
    print(f"train {trained - start:.0f} s, {metrics['train']['seconds']:.0f} s in the loop")
    if args.skip_export:
        return
    result = export_model(run, args.out / "models", variants=args.variants.split(","))
    for path in [*result.accepted, *result.refused]:
        _print_manifest(Manifest.read(path), accepted=path in result.accepted)
    print(f"export {time.perf_counter() - trained:.0f} s")


def train_encoders(args: argparse.Namespace) -> None:
    """One MiniLM per task on the same training rows, exported fp32 (and int8 if asked)."""
    from core.config import TrainConfig
    from export.onnx_export import export_model
    from training.train import train

    for task in args.tasks:
        config = TrainConfig(
            name=f"minilm-{task}",
            family="encoder",
            base_model=args.encoder_model,
            dataset=task,
            train_rows=args.train_rows,
            test_rows=args.test_rows,
            epochs=args.encoder_epochs,
            learning_rate=1e-4,
            max_length=args.max_length,
            batch_size=32,
            threads=args.threads,
        )
        start = time.perf_counter()
        run = train(config, args.out / "runs", show_progress=False)
        result = export_model(run, args.out / "models", variants=args.variants.split(","))
        for path in [*result.accepted, *result.refused]:
            _print_manifest(Manifest.read(path), accepted=path in result.accepted)
        print(f"minilm-{task}: train + export {time.perf_counter() - start:.0f} s")


def _task_figures(manifest: Manifest) -> dict[str, tuple[dict[str, Any], float | None]]:
    """task -> (its served metrics, its answers' agreement with the run) from a manifest of
    one task (its dataset) or of several (`metrics.tasks`, `parity.tasks`)."""
    per_task = manifest.metrics.get("tasks") or {manifest.dataset.get("name"): manifest.metrics}
    return {
        task: (
            metrics,
            (manifest.parity.get("tasks", {}).get(task) or manifest.parity).get(
                "answer_agreement_vs_run"
            ),
        )
        for task, metrics in per_task.items()
    }


def _print_manifest(manifest: Manifest, *, accepted: bool) -> None:
    size = manifest.file_sizes.get("model.onnx", 0) / 1e6
    verdict = "accepted" if accepted else f"refused ({'; '.join(manifest.gate['reasons'])})"
    for task, (metrics, agreement) in _task_figures(manifest).items():
        print(
            f"{manifest.name} {task}: served accuracy {metrics['accuracy']:.4f}, "
            f"answers equal to the run's {agreement:.4f}, {size:.1f} MB, {verdict}"
        )


# ---- the mixed stream ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    model_dirs: list[Path]
    route: dict[str, dict[str, str]]  # task -> the request fields that reach it


def _setups(out: Path, tasks: list[str], variant: str) -> list[Setup]:
    models = out / "models"
    multi = models / f"{MULTI_NAME}-{variant}"
    encoders = [models / f"minilm-{t}-{variant}" for t in tasks]
    return [
        Setup(
            f"one {MULTI_NAME}-{variant} for {len(tasks)} tasks",
            [multi],
            {t: {"model": multi.name, "task": t} for t in tasks},
        ),
        Setup(
            f"{len(tasks)} x minilm-{variant}",
            encoders,
            {t: {"model": d.name} for t, d in zip(tasks, encoders, strict=True)},
        ),
    ]


def _tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


def _stream(
    url: str, setup: Setup, texts: dict[str, list[str]], users: int, seconds: float, seed: int
) -> dict[str, Any]:
    """`users` closed-loop clients for `seconds`; each request one text of a random task."""
    deadline = time.perf_counter() + seconds
    tasks = sorted(texts)

    def user(index: int) -> tuple[list[float], int]:
        rng = random.Random(seed * 1000 + index)
        latencies, errors = [], 0
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.perf_counter() < deadline:
                task = rng.choice(tasks)
                body = {"texts": [rng.choice(texts[task])], **setup.route[task]}
                start = time.perf_counter()
                response = client.post("/classify", json=body)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200
        return latencies, errors

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(users) as pool:
        results = list(pool.map(user, range(users)))
    elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    return {
        "texts_per_s": (len(latencies) - errors) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
        "requests": len(latencies),
        "errors": errors,
    }


def _served(setup: Setup, tasks: list[str]) -> tuple[list[ServedModel], list[TaskAccuracy]]:
    """The setup's models and each task's accuracy, from the manifests of what it serves."""
    models, accuracy = [], []
    for model_dir in setup.model_dirs:
        manifest = Manifest.read(model_dir)
        source = str(model_dir / MANIFEST_NAME)
        models.append(
            ServedModel(
                name=manifest.name,
                model_dir=str(model_dir),
                manifest=source,
                model_onnx_bytes=int(manifest.file_sizes.get("model.onnx", 0)),
            )
        )
        for task, (metrics, agreement) in _task_figures(manifest).items():
            if task in tasks:
                accuracy.append(
                    TaskAccuracy(
                        task=task,
                        model=manifest.name,
                        accuracy=metrics["accuracy"],
                        answers_equal_to_run=agreement,
                        test_rows=metrics.get("rows"),
                        source=source,
                    )
                )
    return models, accuracy


def measure(args: argparse.Namespace) -> MultitaskMeasure:
    """Both setups, alternating, on the mixed stream; the record is written to
    `<out>/multitask_measure.json` and its medians printed."""
    prices = load_prices()
    instance = prices.measured
    texts = {}
    for task in args.tasks:
        from core.config import TrainConfig

        dataset = dataset_for(TrainConfig(name="x", family="encoder", base_model="x", dataset=task))
        texts[task] = dataset.test.texts[: args.texts_per_task]
    setups = _setups(args.out, args.tasks, args.variant)
    for setup in setups:
        for d in setup.model_dirs:
            _print_manifest(Manifest.read(d), accepted=True)
    runs: dict[str, list[StreamRound]] = {s.name: [] for s in setups}
    for round_ in range(args.rounds):
        for setup in setups if round_ % 2 == 0 else setups[::-1]:  # A B, B A, A B ...
            with ServerProcess(setup.model_dirs, threads=args.threads) as server:
                _stream(server.url, setup, texts, args.users, args.warmup_s, seed=99)
                result = _stream(server.url, setup, texts, args.users, args.seconds, round_)
                result["rss_mb"] = _tree_rss_mb(server.process.pid)
            runs[setup.name].append(StreamRound(**result))
            print(f"round {round_ + 1} {setup.name}: " + json.dumps(_round(result)), flush=True)
    results = []
    for setup in setups:
        models, accuracy = _served(setup, args.tasks)
        results.append(
            SetupResult.from_rounds(
                name=setup.name,
                models=models,
                accuracy=accuracy,
                rounds=runs[setup.name],
                price=lambda rate: usd_per_million(instance.usd_per_hour, rate),
            )
        )
    multi, encoders = results
    record = MultitaskMeasure(
        tasks=args.tasks,
        multitask=multi,
        per_task_encoders=encoders,
        instance=instance.name,
        usd_per_hour=instance.usd_per_hour,
        price_table=prices.path,
        users=args.users,
        seconds_per_round=args.seconds,
        warmup_seconds=args.warmup_s,
        rounds=args.rounds,
        command=getattr(args, "command", None) or shlex.join(sys.argv),  # set by main()
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    path = record.write(args.out)
    print_medians(record)
    print(f"record: {path}")
    return record


def print_medians(record: MultitaskMeasure) -> None:
    """The record's medians as the Markdown table docs/multitask.md quotes."""
    print(f"\nmedians over {record.rounds} rounds, {record.users} users, mixed {record.tasks}:")
    print("| setup | model files | texts/s | p50 (ms) | p95 (ms) | RSS (MB) | $/million | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for s in (record.multitask, record.per_task_encoders):
        files = ", ".join(f"{m.model_onnx_bytes / 1e6:.1f} MB" for m in s.models)
        cost = "n/a" if s.usd_per_million is None else f"{s.usd_per_million:.4f}"
        print(
            f"| {s.name} | {files} | {s.median_texts_per_s:.1f} | {s.median_p50_ms:.0f} | "
            f"{s.median_p95_ms:.0f} | {s.median_rss_mb:.0f} ({s.min_rss_mb:.0f}-"
            f"{s.max_rss_mb:.0f}) | {cost} ({record.instance}) | {s.errors} |"
        )


def _round(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["train", "encoders", "measure"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", type=_tasks, default=["sst2", "trec"])
    parser.add_argument("--base-model", default="smollm2-135m", help="the multi-task LM")
    parser.add_argument("--encoder-model", default="minilm-l6", help="one per task")
    parser.add_argument("--train-rows", type=int, default=400, help="per task")
    parser.add_argument("--test-rows", type=int, default=None, help="per task (cap)")
    parser.add_argument("--epochs", type=float, default=1.0, help="SmolLM2's")
    parser.add_argument("--encoder-epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="SmolLM2's")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="fp32")
    parser.add_argument("--fresh", action="store_true", help="retrain a complete run")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--variant", default="fp32", help="measure: which variant to serve")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts-per-task", type=int, default=400)
    args = parser.parse_args(argv)
    # The command as typed, for the record: what was measured can be measured again.
    args.command = shlex.join(["python", "-m", "bench.multitask_serving", *(argv or sys.argv[1:])])
    {"train": train_multitask_model, "encoders": train_encoders, "measure": measure}[args.step](
        args
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
