"""Every int8 variant of a trained run: accuracy, agreement, gate, size and latency vs fp32.

    python -m bench.quantization RUN_DIR [RUN_DIR ...] --out DIR

For each run it exports every variant with the project's export code (forced, so that a
refused file is still measured; the table shows the gate's verdict), adds the settings the
recipes chose between (reduce_range and per-channel for the fused graph, accuracy levels for
weight-only int8), and times every file against the unfused fp32 graph in one process:
batch 1 over SST-2-length test texts and batch 16, rounds alternating between files, the
ratio of medians reported. Writes `quantization.md` and `quantization.json` to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.manifest import MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME, Manifest

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp32-opt", "int8", "int8-fused", "int8-smooth", "int8-w8", "int8-mixed")
THREADS = 2
LATENCY_TEXTS = 24  # test texts timed one at a time per round (batch 1)
BATCH = 16


@dataclasses.dataclass
class Row:
    model: str
    variant: str
    path: Path
    accuracy: float
    agreement: float
    gate: str
    size_mb: float
    how: dict[str, Any]
    ratio_b1: float = float("nan")
    ratio_b16: float = float("nan")


def _extra_files(fp32_dir: Path, out: Path, tag: str, build) -> Path:
    """A directory like fp32's holding a model built by `build(src, dst)`; unverified
    manifest (the bench scores it itself)."""
    target = out / tag
    target.mkdir(parents=True, exist_ok=True)
    for name in (TOKENIZER_NAME, MANIFEST_NAME):
        (target / name).write_bytes((fp32_dir / name).read_bytes())
    build(fp32_dir / MODEL_NAME, target / MODEL_NAME)
    return target


def _sweeps(
    fp32_dir: Path, out: Path, model_type: str, which: tuple[str, ...]
) -> dict[str, tuple[Path, dict]]:
    """The settings the recipes chose between, as extra rows: `fused` (dynamic int8 of the
    fused graph, every layer, per-channel and reduce_range on/off), `w8` (accuracy levels)."""
    from export import int8_recipes
    from export.variants import optimize_fp32

    rows: dict[str, tuple[Path, dict]] = {}
    out.mkdir(parents=True, exist_ok=True)
    fused = out / "fused.onnx"
    if "fused" in which:
        optimize_fp32(fp32_dir / MODEL_NAME, fused, model_type=model_type)
    for pc in (True, False) if "fused" in which else ():
        for rr in (False, True):
            tag = f"int8-fused-all pc={int(pc)} rr={int(rr)}"
            how = {"per_channel": pc, "reduce_range": rr, "fp32_nodes": 0}

            def quant(_src, dst, pc=pc, rr=rr):
                int8_recipes.dynamic_int8(fused, dst, [], per_channel=pc, reduce_range=rr)

            rows[tag] = (_extra_files(fp32_dir, out, tag.replace(" ", "_"), quant), how)
    for level in (0, 1, 2, 4) if "w8" in which else ():
        if level == int8_recipes.W8_ACCURACY_LEVEL:
            continue  # the int8-w8 variant itself

        def w8(src, dst, level=level):
            int8_recipes.build_w8(src, dst, accuracy_level=level)

        tag = f"int8-w8 level={level}"
        rows[tag] = (_extra_files(fp32_dir, out, tag.replace(" ", "_"), w8), {"level": level})
    return rows


def _score(model_dir: Path, texts: list[str]) -> np.ndarray:
    from service.runtime import OnnxClassifier

    return OnnxClassifier(model_dir, threads=THREADS, verify=False).logits_batched(texts)


def _latency(rows: list[Row], texts: list[str], rounds: int) -> None:
    """Fill ratio_b1 / ratio_b16 against the first row (unfused fp32).

    The files alternate call by call (text 1 on every file, then text 2, ...), so a burst of
    load from another process falls on all of them alike; each round sums a file's calls,
    and the ratio is of the medians over rounds."""
    from service.runtime import OnnxClassifier

    models = [OnnxClassifier(r.path, threads=THREADS, verify=False) for r in rows]
    b1 = np.zeros((len(rows), rounds))
    b16 = np.zeros((len(rows), rounds))
    batch = texts[:BATCH]
    for model in models:  # warm-up: first runs allocate
        model.logits(texts[:1])
        model.logits(batch)
    for r in range(rounds):
        for text in texts[:LATENCY_TEXTS]:
            for i, model in enumerate(models):
                start = time.perf_counter()
                model.logits([text])
                b1[i, r] += (time.perf_counter() - start) / LATENCY_TEXTS
        for _ in range(3):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model.logits(batch)
                b16[i, r] += (time.perf_counter() - start) / 3
    m1, m16 = np.median(b1, axis=1), np.median(b16, axis=1)  # (files,)
    for i, row in enumerate(rows):
        row.ratio_b1 = float(m1[i] / m1[0])
        row.ratio_b16 = float(m16[i] / m16[0])
        row.how["ms_b1"] = round(float(m1[i]) * 1e3, 2)
        row.how["ms_b16"] = round(float(m16[i]) * 1e3, 2)


def bench_run(
    run_dir: Path,
    out: Path,
    variants: tuple[str, ...],
    rounds: int,
    sweeps: tuple[str, ...] = ("fused", "w8"),
) -> list[Row]:
    from core.data import dataset_for
    from export import gate
    from export.onnx_export import export_model
    from training.evaluate import gold
    from training.run_dir import load_run

    models = out / "models"
    result = export_model(run_dir, models, variants=variants, force=True)
    dirs = {Manifest.read(d).variant: d for d in result.accepted}
    _, _, config, _ = load_run(run_dir)
    dataset = dataset_for(config)
    texts, y_true = dataset.test.texts, gold(dataset, dataset.test)
    fp32 = Manifest.read(dirs["fp32"])
    rows = []
    for variant in variants:
        m = Manifest.read(dirs[variant])
        g = m.gate
        rows.append(
            Row(
                model=config.name,
                variant=variant,
                path=dirs[variant],
                accuracy=m.metrics["accuracy"],
                agreement=g.get("agreement", 1.0) if variant != "fp32" else 1.0,
                gate="passed" if g["passed"] else "refused: " + "; ".join(g["reasons"]),
                size_mb=m.file_sizes[MODEL_NAME] / 1e6,
                how=dict(m.quantization or m.optimization),
            )
        )
    parent = _score(dirs["fp32"], texts)
    model_type = json.loads((dirs["fp32"] / "config.json").read_text())["model_type"]
    extra = _sweeps(dirs["fp32"], out / "sweeps", model_type, sweeps)
    for tag, (path, how) in extra.items():
        logits = _score(path, texts)
        verdict = gate.check(logits, parent, y_true, rule=fp32.decision)
        rows.append(
            Row(
                model=config.name,
                variant=tag,
                path=path,
                accuracy=float(verdict.accuracy or 0.0),
                agreement=verdict.agreement,
                gate="passed" if verdict.passed else "refused: " + "; ".join(verdict.reasons),
                size_mb=(path / MODEL_NAME).stat().st_size / 1e6,
                how=how,
            )
        )
    # SST-2-length inputs: the test texts themselves, in their order.
    _latency(rows, texts[:LATENCY_TEXTS], rounds)
    return rows


def _as_json(row: Row) -> dict[str, Any]:
    return {**dataclasses.asdict(row), "path": str(row.path)}


def _read_rows(path: Path) -> list[Row]:
    return [Row(**{**r, "path": Path(r["path"])}) for r in json.loads(path.read_text())]


def markdown(rows: list[Row]) -> str:
    head = (
        "| model | variant | accuracy | agreement vs fp32 | gate | size MB | b1 vs fp32 | "
        "b16 vs fp32 | fp32 kept |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r.model} | {r.variant} | {r.accuracy:.2%} | {r.agreement:.2%} | {r.gate} | "
        f"{r.size_mb:.1f} | {r.ratio_b1:.2f}x | {r.ratio_b16:.2f}x | "
        f"{r.how.get('fp32_nodes', '')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument(
        "--sweeps",
        nargs="*",
        choices=("fused", "w8"),
        default=["fused", "w8"],
        help="settings swept besides the variants (none: --sweeps with no value)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the table in --out (rows of the same model and variant are replaced), "
        "so that one model can be measured in several shorter commands",
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=[], help="tables (json) to join into --out"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    variants = tuple(dict.fromkeys(["fp32", *args.variants]))
    args.out.mkdir(parents=True, exist_ok=True)
    table_json = args.out / "quantization.json"
    rows = _read_rows(table_json) if args.append and table_json.exists() else []
    for other in args.merge:
        rows += _read_rows(other)
    for run in args.runs:
        scratch = Path(tempfile.mkdtemp(prefix=f"quant-{run.name}-", dir=args.scratch))
        new = bench_run(run.resolve(), scratch, variants, args.rounds, tuple(args.sweeps))
        rows = _replace(rows, new)
        print(markdown(rows), flush=True)
        _write(rows, args.out)
    _write(rows, args.out)


def _replace(rows: list[Row], new: list[Row]) -> list[Row]:
    """`rows` with `new` ones in place of those of the same model and variant; fp32, the
    ratios' base measured again in every command, keeps its first row."""
    keys = {(r.model, r.variant) for r in rows}
    fresh = {(n.model, n.variant) for n in new if n.variant != "fp32"}
    kept = [r for r in rows if (r.model, r.variant) not in fresh]
    added = [n for n in new if n.variant != "fp32" or (n.model, "fp32") not in keys]
    return sorted(kept + added, key=lambda r: (r.model, r.variant != "fp32"))


def _write(rows: list[Row], out: Path) -> None:
    (out / "quantization.md").write_text(markdown(rows))
    (out / "quantization.json").write_text(json.dumps([_as_json(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
