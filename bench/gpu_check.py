"""The prepared GPU check (`make gpu-check`): everything that needs CUDA, in one run of at most
nine minutes, written to one figures file.

    python -m bench.gpu_check [--out bench_out/gpu_check] [--usd-per-hour P] [--budget-s 540]

On a machine with CUDA (torch sees a GPU and onnxruntime has its CUDA provider) it runs, in
this order, each phase only while the budget lasts:

1. the GPU tests (`pytest -m gpu`);
2. the demo's three families on SST-2 (configs/gpu.yaml): trained on CUDA, exported to fp32,
   fp16 and int8, each gated on CUDA, served by the service on CUDA and swept with Locust;
3. one full-data accuracy cell per family on SST-2 (bench/accuracy.py, budget `gpu`, one
   epoch), cut off at the budget's end with the cells done so far.

`figures.json` and `figures.md` under `--out` hold the GPU texts/s at the SLO and the cost per
million of every variant priced as the instance it ran on (`--instance`, `--usd-per-hour`:
no price is assumed), fp16's accuracy and agreement on CUDA, the test counts and the cells.
They are rewritten after every phase, so a cut-off run keeps what it measured.

Without CUDA it does nothing and says so in one line: exit 0 where there is no GPU at all,
exit 1 where a GPU is visible but onnxruntime cannot use it (onnxruntime-gpu missing).

Why a script and not a pytest marker: the phases share one budget and one figures file, and
a cut-off must keep the figures of the phases that finished.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import devices
from core.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parent.parent
GPU_PRESET = REPO / "configs" / "gpu.yaml"
SST2_TRAIN = REPO / "data" / "sst2" / "train.jsonl"
SST2_TEST = REPO / "data" / "sst2" / "test.jsonl"
DEFAULT_BUDGET_S = 540  # nine minutes: the device machine's 15 leave room for set-up
CELL_FAMILIES = "minilm,smollm2-last,smollm2-bidir-l12"
DEFAULT_INSTANCE = "1x NVIDIA H200 (the machine this ran on)"


@dataclasses.dataclass(frozen=True)
class Cuda:
    torch_sees_gpu: bool
    onnxruntime_cuda: bool
    gpu_name: str | None
    why_not: str  # empty when both are there


def probe_cuda() -> Cuda:
    try:
        import torch
    except ImportError:
        torch_gpu, name = False, None
    else:
        torch_gpu = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if torch_gpu else None
    # The service's own check: the CUDA provider is there and its libraries load.
    try:
        ort_cuda, ort_why = devices.resolve("cuda") == "cuda", ""
    except devices.DeviceError as exc:
        ort_cuda, ort_why = False, str(exc)
    why = ""
    if not torch_gpu:
        why = "torch sees no CUDA GPU here"
    elif not ort_cuda:
        why = f"torch sees {name}, but {ort_why}"
    return Cuda(torch_gpu, ort_cuda, name, why)


class Clock:
    """The check's one budget: each phase asks what is left."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 1)


def run_gpu_tests(clock: Clock) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    command.append(str(REPO / "tests" / "test_gpu.py"))
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=max(clock.left(), 1)
        )
    except subprocess.TimeoutExpired:
        return {"summary": "timed out", "passed": False}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"summary": lines[-1] if lines else done.stderr[-300:], "passed": done.returncode == 0}


def run_demo_on_gpu(out: Path, show_progress: bool) -> Path:
    """configs/gpu.yaml on SST-2 through `smallcls compare`'s own code; the report dir."""
    from smallcls.compare import CompareInputs, compare_config
    from smallcls.demo import run_demo

    inputs = CompareInputs(train=SST2_TRAIN, test=SST2_TEST, name="sst2")
    config = compare_config(inputs, out, preset=GPU_PRESET)
    return run_demo(config, show_progress=show_progress)


def variant_rows(report_dir: Path, models_dir: Path, usd_per_hour: float | None) -> list[dict]:
    """One row per served variant: accuracy, agreement and where the gate ran (its manifest),
    latency and texts/s at the SLO (the report), and the cost at the given price."""
    from reports.cost import usd_per_million

    rows = []
    with open(report_dir / "report.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            manifest = json.loads((models_dir / row["name"] / MANIFEST_NAME).read_text())
            gate = manifest.get("gate") or {}
            rate = float(row["texts_per_s_at_slo"]) if row["texts_per_s_at_slo"] else None
            cost = usd_per_million(usd_per_hour, rate) if usd_per_hour and rate else None
            rows.append(
                {
                    "name": row["name"],
                    "precision": row["precision"],
                    "accuracy": float(row["accuracy"]) if row["accuracy"] else None,
                    "agreement_vs_parent": gate.get("agreement"),
                    "gate_checked_on": gate.get("checked_on"),
                    "p95_ms": float(row["p95_ms"]) if row["p95_ms"] else None,
                    "users": int(row["users"]) if row["users"] else None,
                    "texts_per_s_at_slo": rate,
                    "usd_per_million": cost,
                }
            )
    return rows


def refused_variants(models_dir: Path) -> list[dict[str, Any]]:
    out = []
    for manifest_path in sorted((models_dir / "refused").glob(f"*/{MANIFEST_NAME}")):
        gate = json.loads(manifest_path.read_text()).get("gate") or {}
        out.append(
            {
                "name": manifest_path.parent.name,
                "agreement_vs_parent": gate.get("agreement"),
                "gate_checked_on": gate.get("checked_on"),
                "reasons": gate.get("reasons", []),
            }
        )
    return out


def run_accuracy_cells(out: Path, clock: Clock) -> dict[str, Any]:
    """bench/accuracy.py on full SST-2, one epoch per cell, stopped at the budget's end; its
    table is written after every cell, so the cells done survive the stop."""
    cells_out = out / "accuracy"
    command = [
        *(sys.executable, "-m", "bench.accuracy", "--budget", "gpu", "--datasets", "sst2"),
        *("--families", CELL_FAMILIES, "--set", "epochs=1", "--set", "device=cuda"),
        *("--out", str(cells_out), "--quiet"),
    ]
    timed_out = False
    try:
        subprocess.run(command, cwd=REPO, timeout=max(clock.left(), 1), check=False)
    except subprocess.TimeoutExpired:
        timed_out = True
    tables = sorted(cells_out.glob("*.md"))
    return {
        "stopped_by_budget": timed_out,
        "table": tables[-1].read_text(encoding="utf-8") if tables else "no cell finished",
    }


def write_figures(out: Path, figures: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    path = out / "figures.md"
    path.write_text(render(figures), encoding="utf-8")
    return path


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(figures: dict[str, Any]) -> str:
    lines = [
        "# GPU check",
        "",
        f"{figures['gpu']} ({figures['when']}); {figures['elapsed_s']} s of a "
        f"{figures['budget_s']} s budget. Priced as {figures['instance']} at "
        + (
            f"${figures['usd_per_hour']}/hour."
            if figures["usd_per_hour"]
            else "no price (pass --usd-per-hour): texts/s only."
        ),
        "",
    ]
    tests = figures.get("gpu_tests")
    if tests:
        lines += [f"GPU tests: {tests['summary']}", ""]
    rows = figures.get("variants")
    if rows:
        lines += [
            "| variant | accuracy | agreement | gate on | p95 (ms) | users | texts/s at SLO "
            "| $ per million |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['name']} | {_fmt(r['accuracy'], '.2%')} | "
                f"{_fmt(r['agreement_vs_parent'], '.2%')} | {r['gate_checked_on'] or 'n/a'} | "
                f"{_fmt(r['p95_ms'], '.0f')} | {_fmt(r['users'], 'd')} | "
                f"{_fmt(r['texts_per_s_at_slo'], '.1f')} | {_fmt(r['usd_per_million'], '.4f')} |"
            )
        lines.append("")
    for refused in figures.get("refused", []):
        lines.append(f"- refused: {refused['name']}: {'; '.join(refused['reasons'])}")
    cells = figures.get("accuracy_cells")
    if cells:
        lines += ["", "## Full-data accuracy cells (SST-2, one epoch)", "", cells["table"]]
    for note in figures.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, default=Path("bench_out/gpu_check"))
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--instance", default=DEFAULT_INSTANCE, help="what the prices are of")
    parser.add_argument("--usd-per-hour", type=float, default=None, help="the instance's price")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cuda = probe_cuda()
    if cuda.why_not:
        print(f"gpu-check: {cuda.why_not}: nothing checked", flush=True)
        return 0 if not cuda.torch_sees_gpu else 1
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    clock = Clock(args.budget_s)
    figures: dict[str, Any] = {
        "gpu": cuda.gpu_name,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "budget_s": args.budget_s,
        "instance": args.instance,
        "usd_per_hour": args.usd_per_hour,
        "notes": [],
    }
    out: Path = args.out
    figures["gpu_tests"] = run_gpu_tests(clock)
    figures["elapsed_s"] = clock.elapsed()
    write_figures(out, figures)
    demo_out = out / "demo"
    try:
        report_dir = run_demo_on_gpu(demo_out, show_progress=not args.quiet)
    except Exception as exc:  # keep the figures of the phase before
        figures["notes"].append(f"demo on CUDA failed: {str(exc).splitlines()[0][:300]}")
    else:
        figures["variants"] = variant_rows(report_dir, demo_out / "models", args.usd_per_hour)
        figures["refused"] = refused_variants(demo_out / "models")
    figures["elapsed_s"] = clock.elapsed()
    write_figures(out, figures)
    if clock.left() > 60:
        figures["accuracy_cells"] = run_accuracy_cells(out, clock)
    else:
        figures["notes"].append("accuracy cells not run: the budget was spent")
    figures["elapsed_s"] = clock.elapsed()
    path = write_figures(out, figures)
    print(path.read_text(encoding="utf-8"))
    print(f"figures: {path} and {path.with_suffix('.json')}")
    return 0 if figures["gpu_tests"]["passed"] and figures.get("variants") else 1


if __name__ == "__main__":
    sys.exit(main())
