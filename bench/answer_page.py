"""The answer page on benchmark datasets: for each dataset, `smallcls compare`'s pipeline
(train every family of the preset, export fp32 + int8 behind the gate, serve, sweep the load)
on a CPU-sized slice, then one page across the datasets (reports/answer_page.py).

    python -m bench.answer_page --out bench_out/answer                  # cpu budget, 4 datasets
    python -m bench.answer_page --budget micro --datasets sst2,trec     # proves it runs
    python -m bench.answer_page --datasets sst2,trec6,ag_news,banking77 --latency-targets 50,100

Budgets (per dataset; the page's figures are NOT comparable to full-data results):
- cpu:   MiniLM 4,000 training rows, each SmolLM2 1,500; test and validation capped at 500
         rows; the sweep 1, 4 and 8 users, 5 s per step. TREC took 431 s on 2 cores (train
         302 s, of it SmolLM2 last-token 237 s; export 54 s; serve + load tests 71 s; one run),
         so about 30-40 minutes for four datasets (AG News' 128 tokens train slower).
- micro: 64 training rows, 64 test rows, one 3 s step at 1 user: checks the grid runs.
`--train-rows`/`--test-rows` override a budget's rows. To keep each command short,
run one dataset per command with the same `--out`, then `--page-only` with all of them.
The training, export, serving and load tests are `smallcls compare`'s own
(smallcls/compare.py, smallcls/demo.py). Each dataset's output is `<out>/<dataset>/` as
`compare --out` writes it, so a complete run is reused when the benchmark is started again,
and `smallcls report --from <out>/<dataset> ...` redraws the page. `--multitask
<mt>/multitask_measure.json` adds one multi-task model against one encoder per task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from core.benchmarks import BENCHMARKS, benchmark_paths
from core.data import read_split, write_split

PRESET = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEFAULT_DATASETS = ("sst2", "trec", "ag_news", "emotion")
ALIASES = {"trec6": "trec"}  # the task's usual name for the coarse TREC labels
# Cap on tokens per text: IMDB's 512 would take most of the budget on its own.
MAX_LENGTH_CAP = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    train_rows: dict[str, int]  # family -> rows (the preset's families)
    test_rows: int
    steps: list[int]  # load-test users per sweep step
    step_seconds: int


BUDGETS = {
    "cpu": Budget(
        train_rows={"encoder": 4000, "extracted_encoder": 1500, "causal_lm": 1500},
        test_rows=500, steps=[1, 4, 8], step_seconds=5,
    ),
    "micro": Budget(
        train_rows={"encoder": 64, "extracted_encoder": 64, "causal_lm": 64},
        test_rows=64, steps=[1], step_seconds=3,
    ),
}  # fmt: skip


def _slice(source: Path | None, out: Path, rows: int, seed: int) -> Path | None:
    """A seeded subsample of a split, written where the pipeline reads it."""
    if source is None:
        return None
    split = read_split(source).subsample(rows, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_split(out, split)


def dataset_config(
    dataset: str, out: Path, budget: Budget, *, families: list[str] | None,
    targets: list[float], echo: Any,
) -> Any:  # fmt: skip
    """`smallcls compare`'s config for one benchmark dataset, sized to the budget."""
    from smallcls.compare import CompareInputs, compare_config

    info = BENCHMARKS[dataset]
    if info.problem_type != "single_label" or info.oos_label:
        raise SystemExit(f"{dataset}: the answer page benchmark takes single-label datasets")
    paths = benchmark_paths(dataset)
    inputs_dir = out / "inputs" / dataset
    inputs = CompareInputs(
        train=paths["train"],  # type: ignore[arg-type]
        test=_slice(paths["test"], inputs_dir / "test.jsonl", budget.test_rows, 0),
        validation=_slice(paths["validation"], inputs_dir / "validation.jsonl",
                          budget.test_rows, 0),
        name=dataset,
    )  # fmt: skip
    overrides = {
        "loadtest_steps": budget.steps,
        "loadtest_seconds": budget.step_seconds,
        # The load test searches the highest rate for the loosest target, then for each
        # tighter one, so every target has points of its own.
        "slo_p95_ms": max(targets),
        "price_targets_ms": sorted(targets),
        "accuracy_floor": 0.0,
    }
    config = compare_config(inputs, out / dataset, preset=PRESET, families=families,
                            overrides=overrides, echo=echo)  # fmt: skip
    models = [
        dataclasses.replace(
            m,
            train_rows=budget.train_rows.get(m.family, m.train_rows),
            max_length=min(info.max_length, MAX_LENGTH_CAP),
            truncation=info.truncation,
            max_val_rows=min(m.max_val_rows, budget.test_rows),
        )
        for m in config.models
    ]
    return dataclasses.replace(config, models=models)


def run(args: argparse.Namespace) -> Path:
    from reports.answer import group_from_output
    from reports.answer_page import build_answer_page
    from smallcls.demo import run_demo

    budget = BUDGETS[args.budget]
    if args.train_rows:
        budget = dataclasses.replace(budget, train_rows=dict.fromkeys(budget.train_rows,
                                                                     args.train_rows))  # fmt: skip
    if args.test_rows:
        budget = dataclasses.replace(budget, test_rows=args.test_rows)
    datasets = [ALIASES.get(d, d) for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; known: {sorted(BENCHMARKS)}")
    families = [f for f in args.families.split(",") if f] if args.families else None
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def echo_for(label: str) -> Any:
        def echo(line: str) -> None:
            if line:
                print(f"[{time.perf_counter() - start:6.0f} s] {label} {line}", flush=True)

        return echo

    for i, dataset in enumerate([] if args.page_only else datasets, 1):
        label = f"{dataset} ({i}/{len(datasets)})"
        echo = echo_for(label)
        began = time.perf_counter()
        config = dataset_config(dataset, out, budget, families=families,
                                targets=args.latency_targets, echo=echo)  # fmt: skip
        echo(
            "training rows " + ", ".join(f"{m.name} {m.train_rows}" for m in config.models)
            + f"; {budget.test_rows} test rows"
        )  # fmt: skip
        run_demo(config, echo=echo, show_progress=False)
        timings[dataset] = time.perf_counter() - began
        echo(f"done in {timings[dataset]:.0f} s")
    groups = [group_from_output(out / d) for d in datasets]
    result = build_answer_page(groups, out / "page", latency_targets=args.latency_targets,
                               multitask=args.multitask)  # fmt: skip
    timings["total"] = time.perf_counter() - start
    if not args.page_only:  # a page alone measured nothing
        _save_timings(out, args.budget, budget, timings)
    print("", flush=True)
    for text in (a.text for a in result.page.answers.values()):
        print(text)
    print(f"page: {result.html_path} (and {result.markdown_path.name}, {result.csv_path.name}, "
          f"{result.json_path.name}); {timings['total']:.0f} s in all")  # fmt: skip
    return result.markdown_path


def _save_timings(out: Path, name: str, budget: Budget, seconds: dict[str, float]) -> None:
    """Each dataset's wall time, merged with those of earlier commands on the same --out."""
    path = out / "timings.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**old.get("seconds", {}), **seconds}
    record = {"budget": name, "seconds": merged, "budget_rows": dataclasses.asdict(budget)}
    path.write_text(json.dumps(record, indent=2) + "\n")


def _targets(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/answer"))
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument(
        "--datasets",
        default=",".join(DEFAULT_DATASETS),
        help="comma-separated benchmark names (core/benchmarks.py)",
    )
    parser.add_argument(
        "--families",
        default="",
        help="families or preset names, e.g. encoder,causal_lm (default: all)",
    )
    parser.add_argument(
        "--latency-targets",
        type=_targets,
        default=[50.0, 100.0, 200.0],
        help="p95 targets in ms; the first is the one the summary uses",
    )
    parser.add_argument("--train-rows", type=int, default=None, help="rows for every family")
    parser.add_argument("--test-rows", type=int, default=None, help="test/validation rows")
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="only the page, from the datasets' outputs already under --out",
    )
    parser.add_argument(
        "--multitask",
        type=Path,
        default=None,
        metavar="PATH",
        help="a multitask_measure.json (bench/multitask_serving.py measure) for the page's "
        "section 'One model for many tasks'",
    )
    args = parser.parse_args(argv)  # fmt: skip
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
