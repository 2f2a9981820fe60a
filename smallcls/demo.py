"""The whole pipeline in one call: train -> export -> serve -> load-test -> report.

Each stage's output lands under one directory (runs/, models/, loadtests/, report/), so every
number in the report traces back to a file next to it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from core.config import DemoConfig, TrainConfig, to_dict

log = logging.getLogger(__name__)

# Accuracy targets of the demo on SST-2's 872-row test split (issue 2).
TARGETS = {"encoder": 0.86, "causal_lm": 0.84}


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
    from core.manifest import Manifest
    from export.onnx_export import export_run
    from loadtests.sweep import run_sweep
    from reports.report import build_report
    from service.launch import ServerProcess
    from training.train import train

    out = Path(config.output_dir)
    timings: dict[str, float] = {}
    total = len(config.models)

    start = time.perf_counter()
    run_dirs: list[Path] = []
    test_accuracy: dict[str, float] = {}
    for i, model in enumerate(config.models, 1):
        run_dir = out / "runs" / model.name
        if not fresh and _reusable(run_dir, model):
            echo(f"[train {i}/{total}] {model.name}: reusing complete run {run_dir}")
        else:
            echo(
                f"[train {i}/{total}] {model.name}: {model.family}/{model.head} on "
                f"{model.base_model}, {model.train_rows or 'all'} rows"
            )
            run_dir = train(model, out / "runs", show_progress=show_progress)
        test_accuracy[model.name] = json.loads((run_dir / "metrics.json").read_text())["test"][
            "accuracy"
        ]
        echo(f"[train {i}/{total}] {model.name}: test accuracy {test_accuracy[model.name]:.2%}")
        run_dirs.append(run_dir)
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    model_dirs: list[Path] = []
    texts_for: dict[Path, Path] = {}  # each model is load-tested with its own test texts
    for i, (run_dir, model) in enumerate(zip(run_dirs, config.models, strict=True), 1):
        echo(f"[export {i}/{total}] {run_dir.name}: ONNX {' + '.join(config.precisions)}")
        for model_dir in export_run(run_dir, out / "models", variants=tuple(config.precisions)):
            model_dirs.append(model_dir)
            texts_for[model_dir] = Path(model.test_path)
    timings["export"] = time.perf_counter() - start

    start = time.perf_counter()
    loadtest_dirs: list[Path] = []
    echo(f"[serve] starting BentoML with {len(model_dirs)} models")
    with ServerProcess(
        model_dirs, threads=config.serve_threads, log_path=out / "server.log"
    ) as server:
        echo(f"[serve] ready at {server.url}")
        assert server.process is not None
        for i, model_dir in enumerate(model_dirs, 1):
            target = out / "loadtests" / model_dir.name
            echo(
                f"[loadtest {i}/{len(model_dirs)}] {model_dir.name}: sweep over "
                f"{config.loadtest_steps} users, {config.loadtest_seconds} s per step, "
                f"until p95 > {config.slo_p95_ms:g} ms"
            )
            sweep = run_sweep(
                host=server.url,
                model=model_dir.name,
                texts_path=texts_for[model_dir],
                out_dir=target,
                steps=config.loadtest_steps,
                step_seconds=config.loadtest_seconds,
                slo_p95_ms=config.slo_p95_ms,
                max_length=Manifest.read(model_dir).max_length,
                server_pid=server.process.pid,
                echo=echo,
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
    )
    echo("")
    echo(result.markdown)
    if result.recommendation is not None:
        echo(result.recommendation.message)
    for model in config.models:
        target = TARGETS.get(model.family)
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
