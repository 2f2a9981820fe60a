"""Speed of each exported variant against fp32 ONNX and PyTorch eager, in one process.

    python bench/export_speed.py --run-dir runs/minilm --models-dir models [--repeats 30]

Every variant `<models-dir>/<run name>-<variant>/` found (refused ones too, with
--include-refused) runs the same token batches with onnxruntime on a fixed number of threads;
the run's torch model runs them in eager mode on as many threads. Batches: 1 and 32 texts,
short (SST-2 length: the test split's median text) and long (texts joined and truncated to the
model's max length). Timing covers the model call only (tokenization is the same for all).
Rounds are interleaved (each round runs every model once) so a background load slows all
models alike, and the median of the rounds is reported. Prints one Markdown table with the
ratios and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclasses.dataclass
class Case:
    batch: int
    length: str  # "short" | "long"
    texts: list[str]


def make_cases(texts: list[str], batches: list[int], max_length: int) -> list[Case]:
    by_len = sorted(texts, key=len)
    median = len(by_len) // 2
    cases = []
    for b in batches:
        start = max(0, median - b // 2)
        cases.append(Case(b, "short", by_len[start : start + b]))
        # Long: several test texts joined, so truncation fills max_length tokens.
        joined = " ".join(by_len[-8:])
        cases.append(Case(b, "long", [joined] * b))
    return cases


def time_rounds(fns: dict[str, callable], repeats: int, warmup: int) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--include-refused", action="store_true")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch eager")
    parser.add_argument("--out", type=Path, help="JSON output (default: <models-dir>/bench-*.json)")
    args = parser.parse_args(argv)

    # Fixed threads before torch/onnxruntime start their pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import onnxruntime as ort
    import torch

    from core.data import dataset_for
    from core.manifest import VARIANTS, Manifest
    from service.runtime import OnnxClassifier
    from training.run_dir import load_run

    torch.set_num_threads(args.threads)
    model, tokenizer, config, _ = load_run(args.run_dir)
    texts = dataset_for(config).test.texts
    cases = make_cases(texts, args.batches, config.max_length)

    dirs: dict[str, Path] = {}
    for variant in VARIANTS:
        for parent, tag in ((args.models_dir, ""), (args.models_dir / "refused", " (refused)")):
            if tag and not args.include_refused:
                continue
            d = parent / f"{config.name}-{variant}"
            if (d / "manifest.json").is_file():
                dirs[variant + tag] = d
    if "fp32" not in dirs:
        message = f"error: no {config.name}-fp32 in {args.models_dir}: export it first"
        print(message, file=sys.stderr)
        return 2
    sessions = {}
    for key, d in dirs.items():
        clf = OnnxClassifier(d, threads=args.threads)
        # No spin-waiting: an idle session's spinning threads would steal the cores from
        # whichever model runs next in the interleaved rounds (torch included).
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        clf.session = ort.InferenceSession(
            str(d / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        sessions[key] = clf
    manifests = {k: Manifest.read(d) for k, d in dirs.items()}

    rows = []
    for case in cases:
        fns = {}
        tokens = 0
        for key, clf in sessions.items():
            feeds = clf.encode(case.texts)
            tokens = int(feeds["attention_mask"].sum(axis=1).mean())
            fns[key] = lambda clf=clf, feeds=feeds: clf.session.run(["logits"], feeds)
        if not args.no_torch:
            enc = tokenizer(
                [config.prompt_template.replace("{text}", t) for t in case.texts],
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            )

            def eager(enc=enc):
                with torch.inference_mode():
                    model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])

            fns["torch eager"] = eager
        times = time_rounds(fns, args.repeats, args.warmup)
        fp32 = statistics.median(times["fp32"])
        torch_ms = statistics.median(times["torch eager"]) if "torch eager" in times else None
        for key, ts in times.items():
            ms = statistics.median(ts)
            m = manifests.get(key)
            rows.append(
                {
                    "model": config.name,
                    "variant": key,
                    "batch": case.batch,
                    "length": case.length,
                    "tokens": tokens,
                    "median_ms": round(ms, 3),
                    "p90_ms": round(float(np.percentile(ts, 90)), 3),
                    "vs_fp32_onnx": round(ms / fp32, 3),
                    "speedup_vs_torch": round(torch_ms / ms, 3) if torch_ms else None,
                    "accuracy": m.metrics.get("accuracy") if m else None,
                    "agreement": m.gate.get("agreement") if m else None,
                    "size_mb": round(m.file_sizes.get("model.onnx", 0) / 1e6, 1) if m else None,
                }
            )
        print(f"[{case.batch} x {case.length}] done", file=sys.stderr, flush=True)

    print(markdown(rows, args))
    out = args.out or args.models_dir / f"bench-{config.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # bench_out/ is not in a fresh clone
    out.write_text(
        json.dumps(
            {
                "threads": args.threads,
                "repeats": args.repeats,
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"json: {out}")
    return 0


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    def pct(x):
        return "" if x is None else f"{x:.2%}"

    lines = [
        f"threads {args.threads}, median of {args.repeats} interleaved rounds, "
        f"load average {os.getloadavg()[0]:.1f}",
        "",
        "| model | variant | batch | length (tokens) | median ms | p90 ms | × fp32 ONNX "
        "| speed-up vs torch | accuracy | agreement | size MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = "" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}×"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['length']} ({r['tokens']}) "
            f"| {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['vs_fp32_onnx']:.2f} | {speedup} "
            f"| {pct(r['accuracy'])} | {pct(r['agreement'])} | {r['size_mb'] or ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
