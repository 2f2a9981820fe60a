"""Latency and cost of a prompted label-word model with and without its prefix cache, against
prompt length: SmolLM2-135M zero-shot on SST-2 with 0, 2, 4 and 8 few-shot examples.

Two steps, each its own command (each fits a turn of the shared benchmark lock):

    python -m bench.prefix_cache prepare --out /tmp/pc --shots 0,1,2,4 --test-rows 200
    python -m bench.prefix_cache measure --out /tmp/pc --shots 0,1,2,4

`prepare` evaluates each prompt zero-shot (few_shot_k examples per label, so 2k in all),
exports it fp32 with the prefix cache (export/prefix_cache.py) and prints the cache's check
on every test row: answers equal to the uncached graph's, and the largest logit difference.
`measure` loads each model twice in this process (the plain graph, then the cached one) and
times `score_batch`, the service's call, on the same test texts in batches of 1 and 8,
alternating plain and cached per round; it prints the medians over rounds, and $ per million
at that single-stream rate (texts/s = 1 / seconds per text) on the price table's measured
instance (reports/cost.py). Plain and cached are measured in one command, alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from core.config import TrainConfig
from core.data import dataset_for
from core.manifest import Manifest
from reports.cost import load_prices, usd_per_million


def _name(shots: int) -> str:
    return f"smollm2-sst2-{2 * shots}shot"


def prepare(args: argparse.Namespace) -> None:
    from bench.accuracy import PROMPTS
    from export.onnx_export import export_model
    from training.train import train

    template, words = PROMPTS["sst2"]
    for shots in args.shots:
        start = time.perf_counter()
        config = TrainConfig(
            name=_name(shots),
            family="causal_lm",
            head="label_words",
            base_model=args.base_model,
            dataset="sst2",
            prompt_template=template,
            label_words=words,
            zero_shot=True,
            few_shot_k=shots,
            test_rows=args.test_rows,
            max_length=args.max_length,
            threads=args.threads,
            eval_batch_size=16,
        )
        run = train(config, args.out / "runs", show_progress=False)
        result = export_model(
            run, args.out / "models", variants=["fp32"], prefix_cache=True, parity_rows=16
        )
        (model_dir,) = result.accepted
        manifest = Manifest.read(model_dir)
        record = manifest.prefix_cache
        print(
            f"{manifest.name}: accuracy {manifest.metrics['accuracy']:.4f}, prefix cache "
            f"{json.dumps(record)}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )


def _time(model, texts: list[str], batch: int) -> float:
    """Median seconds per text of `score_batch` over the texts in batches of `batch`."""
    per_text = []
    for first in range(0, len(texts) - batch + 1, batch):
        chunk = texts[first : first + batch]
        start = time.perf_counter()
        model.score_batch(chunk)
        per_text.append((time.perf_counter() - start) / batch)
    return statistics.median(per_text)


def measure(args: argparse.Namespace) -> None:
    from service.runtime import OnnxClassifier

    instance = load_prices().measured
    texts = dataset_for(
        TrainConfig(name="x", family="encoder", base_model="x", dataset="sst2")
    ).test.texts
    texts = texts[: args.texts]
    print(
        "| examples | prefix tokens | rows cached | batch | plain ms/text | cached ms/text | "
        "speed-up | plain $/M | cached $/M |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shots in args.shots:
        model_dir = args.out / "models" / f"{_name(shots)}-fp32"
        if not (model_dir / "manifest.json").is_file():
            print(f"| {2 * shots} | not prepared: run `prepare --shots {shots}` first |")
            continue
        record = Manifest.read(model_dir).prefix_cache
        plain = OnnxClassifier(model_dir, threads=args.threads, prefix_cache=False)
        cached = OnnxClassifier(model_dir, threads=args.threads)
        for model in (plain, cached):
            model.score_batch(texts[:2])  # warm
        for batch in args.batches:
            runs = {"plain": [], "cached": []}
            for round_ in range(args.rounds):
                order = (("plain", plain), ("cached", cached))
                for label, model in order if round_ % 2 == 0 else order[::-1]:
                    runs[label].append(_time(model, texts, batch))
            p, c = statistics.median(runs["plain"]), statistics.median(runs["cached"])
            cost_p = usd_per_million(instance.usd_per_hour, 1 / p)
            cost_c = usd_per_million(instance.usd_per_hour, 1 / c)
            print(
                f"| {2 * shots} | {cached.prefix.length} | {record['rows_cached']}/"
                f"{record['rows']} | {batch} | {1000 * p:.1f} | {1000 * c:.1f} | {p / c:.2f}x | "
                f"{cost_p:.3f} | {cost_c:.3f} |",
                flush=True,
            )
        del plain, cached


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "measure"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shots", type=_ints, default=[0, 1, 2, 4], help="examples per label")
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=_ints, default=[1, 8])
    parser.add_argument("--texts", type=int, default=64, help="measure: test texts timed")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    {"prepare": prepare, "measure": measure}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
