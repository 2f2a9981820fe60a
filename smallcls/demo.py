"""The whole pipeline in one call: train -> export -> serve -> load-test -> report.

Each stage's output lands under one directory (runs/, models/, loadtests/, report/), so every
number in the report traces back to a file next to it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.config import DemoConfig, TrainConfig, to_dict

log = logging.getLogger(__name__)

# Accuracy targets of the demo on SST-2's 872-row test split.
TARGETS = {"encoder": 0.86, "causal_lm": 0.84}


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _reusable(run_dir: Path, config: TrainConfig) -> bool:
    """A complete run made from the same config need not be trained again."""
    config_path = run_dir / "config.json"
    if not (run_dir / "COMPLETE").is_file() or not config_path.is_file():
        return False
    return json.loads(config_path.read_text()) == to_dict(config)


def run_demo(
    config: DemoConfig,
    *,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    fresh: bool = False,
) -> Path:
    """Run every stage; returns the report directory."""
    # Heavy imports here, not at module import: `smallcls --help` stays instant.
    from core import devices
    from core.manifest import Manifest
    from core.run_record import RunRecord
    from export.onnx_export import export_run
    from loadtests.sweep import run_sweep
    from reports.report import build_report
    from service.launch import ServerProcess
    from service.settings import ENV_DEVICE
    from training.train import train

    # A device that cannot be used here stops the pipeline now, not after the training.
    devices.resolve(config.export_device)
    devices.resolve(config.serve_device)
    out = Path(config.output_dir)
    timings: dict[str, float] = {}
    total = len(config.models)

    start = time.perf_counter()
    run_dirs: list[Path] = []
    test_accuracy: dict[str, float] = {}
    metric = "accuracy"
    for i, model in enumerate(config.models, 1):
        run_dir = out / "runs" / model.name
        if not fresh and _reusable(run_dir, model):
            echo(f"[train {i}/{total}] {model.name}: reusing complete run {run_dir}")
        else:
            echo(
                f"[train {i}/{total}] {model.name}: {model.family}/{model.head} on "
                f"{model.base_model}, "
                + (f"at most {model.train_rows} training rows" if model.train_rows else "all rows")
            )
            run_dir = train(model, out / "runs", show_progress=show_progress)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        test, rows = metrics["test"], metrics["train"]["rows"]
        if "accuracy" not in test:  # multi-label runs are reported by macro-F1
            metric = "macro_f1"
        test_accuracy[model.name] = test[metric]
        echo(
            f"[train {i}/{total}] {model.name}: test {metric} {test[metric]:.2%} "
            f"({rows} training rows, {test['rows']} test rows)"
        )
        run_dirs.append(run_dir)
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    model_dirs: list[Path] = []
    for i, (model, run_dir) in enumerate(zip(config.models, run_dirs, strict=True), 1):
        variants = config.precisions_for(model.name)
        echo(f"[export {i}/{total}] {run_dir.name}: ONNX {' + '.join(variants)}")
        model_dirs += export_run(
            run_dir,
            out / "models",
            variants=tuple(variants),
            show_progress=show_progress,
            device=config.export_device,
        )
    timings["export"] = time.perf_counter() - start

    start = time.perf_counter()
    loadtest_dirs: list[Path] = []
    echo(f"[serve] starting BentoML with {len(model_dirs)} models")
    with ServerProcess(
        model_dirs,
        threads=config.serve_threads,
        log_path=out / "server.log",
        extra_env={ENV_DEVICE: config.serve_device},
    ) as server:
        echo(f"[serve] ready at {server.url}")
        assert server.process is not None
        for i, model_dir in enumerate(model_dirs, 1):
            target = out / "loadtests" / model_dir.name
            # Each model is load-tested with the test texts its manifest was measured on.
            manifest = Manifest.read(model_dir)
            assert manifest.test_path is not None, f"{model_dir}: manifest names no test file"
            echo(
                f"[loadtest {i}/{len(model_dirs)}] {model_dir.name}: sweep over "
                f"{config.loadtest_steps} users, {config.loadtest_seconds} s per step, "
                f"until p95 > {config.slo_p95_ms:g} ms"
            )
            sweep = run_sweep(
                host=server.url,
                model=model_dir.name,
                texts_path=manifest.test_path,
                text_column=manifest.dataset.get("text_column") or "text",
                out_dir=target,
                steps=config.loadtest_steps,
                step_seconds=config.loadtest_seconds,
                slo_p95_ms=config.slo_p95_ms,
                also_targets=config.price_targets_ms,
                max_length=manifest.max_length,
                server_pid=server.process.pid,
                echo=echo,
                # Live requests/s, p95 and failures about once a second, on stderr.
                progress=_stderr_line if show_progress else None,
            )
            echo(f"[loadtest {i}/{len(model_dirs)}] {sweep.line()}")
            loadtest_dirs.append(target)
    timings["serve+loadtest"] = time.perf_counter() - start

    result = build_report(
        model_dirs=model_dirs,
        loadtest_dirs=loadtest_dirs,
        out_dir=out / "report",
        accuracy_floor=config.accuracy_floor,
        latency_target_ms=config.slo_p95_ms,
        metric=metric,
    )
    echo("")
    echo(result.markdown)
    if result.recommendation is not None:
        echo(result.recommendation.message)
    on_sst2 = {RunRecord.read(r).dataset.name for r in run_dirs} == {"sst2"}
    for model in config.models:
        target = TARGETS.get(model.family) if on_sst2 else None  # the targets are SST-2's
        if target is None:
            continue
        acc = test_accuracy[model.name]
        verdict = "meets" if acc >= target else "MISSES"
        echo(
            f"target: {model.name} ({model.family}) test accuracy {acc:.2%} {verdict} "
            f"the {target:.0%} target"
        )
    echo("stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    echo(f"report: {result.markdown_path}")
    if result.html_path is not None:
        echo(f"html report: {result.html_path}")
    return result.markdown_path.parent
