"""Is the price repeatable? Serve one model, run the same sweep N times, price every run.

    python -m loadtests.repeat MODEL_DIR --out /tmp/price --runs 2 [--precise]
    python -m loadtests.repeat MODEL_DIR --texts data/sst2/test.jsonl --points 6 --seconds 15

One `bentoml serve` (service/launch.py, as `smallcls loadtest` and the demo serve) for all
runs; each run is a full sweep (loadtests/sweep.py) in `<out>/run-<k>/`, priced as the price
table's measured instance on the basis the sweep recorded (reports/cost.py). Prints one line
per run and the ratio of the highest to the lowest price; writes `<out>/repeat.json`.

`--precise` is 6 points of 15 s after a 15 s probe (about 2 minutes a run) instead of the
default's 4 points of 5 s (about 30 s): the default is what the demo can afford for four
models; the precise one is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

PRECISE_POINTS = 6
PRECISE_SECONDS = 15


def price_sweep(sweep: Any, prices_path: Path | None = None) -> dict[str, Any]:
    """The measured instance's price for one sweep, on the basis the sweep recorded."""
    from reports.cost import DEFAULT_PRICES, costs_for, load_prices, usd_per_million

    prices = load_prices(prices_path or DEFAULT_PRICES)
    at = sweep.at_slo
    rate = at["texts_per_s"] if at else None
    cpu = sweep.server_cpu_s_per_text if sweep.cost_basis == "server_cpu_seconds" else None
    costs = costs_for(rate, prices, machine=sweep.machine, cpu_s_per_text=cpu)
    measured = next(c for c in costs if c.instance == prices.measured_as)
    throughput_price = usd_per_million(prices.measured.usd_per_hour, rate) if rate else None
    return {
        "instance": prices.measured_as,
        "usd_per_million": measured.usd_per_million,
        "basis": sweep.cost_basis,
        "note": measured.note,
        "texts_per_s_at_slo": rate,
        "usd_per_million_from_throughput": throughput_price,
        "server_cpu_s_per_text": sweep.server_cpu_s_per_text,
        "server_cpu_percent": at.get("server_cpu_percent") if at else None,
    }


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--texts", type=Path, default=None, help="default: the manifest's")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--precise", action="store_true")
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None, help="per point (and the probe)")
    parser.add_argument("--probe-users", type=int, default=8)
    parser.add_argument("--slo-p95-ms", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=2, help="server ORT threads")
    parser.add_argument("--search", choices=("rate", "users"), default="rate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from core.manifest import Manifest
    from loadtests.sweep import DEFAULT_POINTS, run_sweep
    from service.launch import ServerProcess

    manifest = Manifest.read(args.model_dir)
    texts = args.texts or manifest.test_path
    if texts is None or not Path(texts).is_file():
        parser.error(f"the manifest's test file {texts} is not here: pass --texts")
    points = args.points or (PRECISE_POINTS if args.precise else DEFAULT_POINTS)
    seconds = args.seconds or (PRECISE_SECONDS if args.precise else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with ServerProcess(
        [args.model_dir], threads=args.threads, log_path=args.out / "server.log"
    ) as server:
        assert server.process is not None
        for k in range(1, args.runs + 1):
            print(f"[run {k}/{args.runs}] {manifest.name}: {args.search} search", flush=True)
            sweep = run_sweep(
                host=server.url, model=manifest.name, texts_path=Path(texts),
                out_dir=args.out / f"run-{k}", steps=[args.probe_users], step_seconds=seconds,
                slo_p95_ms=args.slo_p95_ms, max_length=manifest.max_length,
                server_pid=server.process.pid, echo=print, search=args.search, points=points,
                point_seconds=seconds,
            )  # fmt: skip
            priced = price_sweep(sweep)
            runs.append({"run": k, "line": sweep.line(), "method": sweep.method, **priced})
            print(f"[run {k}/{args.runs}] {sweep.line()}")
            print(f"[run {k}/{args.runs}] {_usd(priced['usd_per_million'])} per million on "
                  f"{priced['instance']} ({priced['basis']}); from throughput alone: "
                  f"{_usd(priced['usd_per_million_from_throughput'])}", flush=True)  # fmt: skip
    prices = [r["usd_per_million"] for r in runs if r["usd_per_million"]]
    ratio = max(prices) / min(prices) if len(prices) == len(runs) and prices else None
    record = {"model": manifest.name, "points": points, "seconds": seconds, "runs": runs,
              "max_over_min": ratio}  # fmt: skip
    (args.out / "repeat.json").write_text(json.dumps(record, indent=2) + "\n")
    summary = "n/a (a run had no price)" if ratio is None else f"{ratio:.3f}"
    print(f"prices: {', '.join(f'${p:.4f}' for p in prices)}; highest / lowest: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
