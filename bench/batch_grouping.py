"""CPU per text of the service's batch call under different padding rules: how a server
batch should be cut into ORT calls.

    python -m bench.batch_grouping demo_output/models/minilm-int8-fused
    python -m bench.batch_grouping MODEL_DIR --batches 2,4,16 --slacks 1.0,1.15,1.3 --rounds 5

The SST-2 test texts, in their file order, are cut into batches of each size (what the
batcher hands the model under load: texts of mixed lengths) and each batch goes through
`score_batch` with each `slack` (a group's padded tokens stay under slack x its real tokens);
`one call` is the whole batch padded to its longest text and `one text per call` never
pads. Rules alternate within each round; the table gives the median over rounds of process
CPU per text on the model's thread count (1 by default, as the production workers run), so
a neighbour's load shows less than in wall time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import TrainConfig  # noqa: E402
from core.data import dataset_for  # noqa: E402


def _cpu_ms_per_text(call, batches: list[list[str]]) -> float:
    start = time.process_time()
    for batch in batches:
        call(batch)
    return 1000 * (time.process_time() - start) / sum(len(b) for b in batches)


def _rules(model, slacks: list[float]) -> dict[str, Callable[[list[str]], object]]:
    rules = {f"slack {s:g}": partial(model.score_batch, slack=s) for s in slacks}
    rules["one call"] = partial(model.score_batch, slack=math.inf)
    rules["one text per call"] = lambda b: [model.score_batch([t]) for t in b]
    return rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument(
        "--batches", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8, 16]
    )
    parser.add_argument(
        "--slacks", type=lambda v: [float(x) for x in v.split(",")], default=[1.15, 1.3]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from service.runtime import OnnxClassifier

    model = OnnxClassifier(args.model_dir, threads=args.threads)
    texts = dataset_for(
        TrainConfig(name="x", family="encoder", base_model="x", dataset="sst2")
    ).test.texts[: args.texts]
    model.score_batch(texts[:8])  # warm
    rules = _rules(model, args.slacks)
    print(
        f"{args.model_dir.name}, {len(texts)} SST-2 test texts, {args.threads} thread(s), "
        f"median CPU ms per text over {args.rounds} rounds"
    )
    print("| batch | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for size in args.batches:
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        runs: dict[str, list[float]] = {name: [] for name in rules}
        for round_ in range(args.rounds):
            names = list(rules) if round_ % 2 == 0 else list(rules)[::-1]
            for name in names:
                runs[name].append(_cpu_ms_per_text(rules[name], batches))
        cells = " | ".join(f"{statistics.median(runs[n]):.2f}" for n in rules)
        print(f"| {size} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
