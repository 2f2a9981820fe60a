"""Reading model dirs (manifests), load-test dirs and training runs into a row's fields."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from core.fields import read_json_object
from core.manifest import MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME, Manifest
from core.preprocessing import TextEncoder
from loadtests.run import SUMMARY_NAME, LoadSummary, LoadTestError
from loadtests.sweep import DEFAULT_SLO_P95_MS, SWEEP_NAME, SweepSummary, best_at_slo, meets_slo
from loadtests.texts import read_texts
from reports.rows import RUN_METRICS

# Files ONNX writes beside the graph when it exceeds 2 GB; they are part of the model's size.
EXTERNAL_DATA_NAMES = (f"{MODEL_NAME}.data", f"{MODEL_NAME}_data")
BYTES_PER_MB = 1_000_000  # decimal megabytes, as file browsers and the Hub show sizes
# Texts tokenized to estimate FLOPs per example: enough for a stable mean, quick to tokenize.
FLOPS_SAMPLE = 1000


class ReportError(ValueError):
    """An input the report cannot use; the message names the file."""


def read_manifest(model_dir: Path) -> Manifest:
    """The manifest, ignoring keys this version does not know: other stages may add optional
    fields (new variants, gate results) and the report should still read what it needs."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        return Manifest.read(model_dir)  # raises ManifestError naming the file
    data = read_json_object(path, ReportError, missing=f"{path} not found")
    known = {f.name for f in dataclasses.fields(Manifest)}
    return Manifest.from_dict({k: v for k, v in data.items() if k in known})


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadPoint:
    """The operating point of one load-test directory at a latency target."""

    model: str
    source: str  # the JSON file it was read from
    point: LoadSummary  # the chosen step (or the lightest one, when none met the target)
    step_dir: str | None
    meets_slo: bool
    latency_target_ms: float
    p95_lightest_ms: float | None
    machine: str | None
    # The server's CPU-seconds per text at the chosen step, when the sweep says to price
    # from it (cost_basis "server_cpu_seconds": the load generator shared the server's
    # cores, so the throughput undercounts what the instance would serve); None otherwise.
    cpu_s_per_text: float | None = None
    method: str = ""  # the sweep's one-sentence method, for the report


def read_load_point(loadtest_dir: Path, latency_target_ms: float | None) -> LoadPoint:
    loadtest_dir = Path(loadtest_dir)
    try:
        if (loadtest_dir / SWEEP_NAME).is_file():
            sweep = SweepSummary.read(loadtest_dir)
            steps = sweep.step_summaries(source=str(loadtest_dir / SWEEP_NAME))
            if not steps:
                return _probe_only(loadtest_dir, sweep, latency_target_ms)
            target = latency_target_ms or sweep.slo_p95_ms
            best = best_at_slo(steps, target, sweep.max_failure_rate)
            # The lightest load: fewest users, or for an open-loop search the lowest rate.
            load = [s.get("rate") or s["users"] for s in sweep.steps]
            lightest = steps[load.index(min(load))]
            point = best or lightest
            step_dir = sweep.steps[next(i for i, s in enumerate(steps) if s is point)]["dir"]
            by_cpu = sweep.cost_basis == "server_cpu_seconds"
            return LoadPoint(
                model=sweep.model, source=str(loadtest_dir / SWEEP_NAME), point=point,
                step_dir=str(loadtest_dir / step_dir), meets_slo=best is not None,
                latency_target_ms=target, p95_lightest_ms=lightest.p95_ms,
                machine=sweep.machine,
                cpu_s_per_text=point.server_cpu_s_per_text if by_cpu else None,
                method=sweep.method,
            )  # fmt: skip
        summary = LoadSummary.read(loadtest_dir)
    except LoadTestError as exc:  # its message names the file
        raise ReportError(str(exc)) from exc
    target = latency_target_ms or DEFAULT_SLO_P95_MS
    return LoadPoint(
        model=summary.model, source=str(loadtest_dir / SUMMARY_NAME), point=summary,
        step_dir=None, meets_slo=meets_slo(summary, target, 0.01), latency_target_ms=target,
        p95_lightest_ms=None, machine=None,
    )  # fmt: skip


def _probe_only(
    loadtest_dir: Path, sweep: SweepSummary, latency_target_ms: float | None
) -> LoadPoint:
    """A rate search that stopped after its closed-loop probe (nothing was answered well
    enough to search under): the model is reported at the probe's latency, unpriced."""
    where = loadtest_dir / SWEEP_NAME
    probe = sweep.probe_summary(source=str(where))
    if probe is None:
        raise ReportError(f"{where} has no steps and no probe: load-test {sweep.model} again")
    return LoadPoint(
        model=sweep.model, source=str(where), point=probe, step_dir=None, meets_slo=False,
        latency_target_ms=latency_target_ms or sweep.slo_p95_ms, p95_lightest_ms=None,
        machine=sweep.machine, method=f"{sweep.method} (stopped: {sweep.stop_reason})",
    )  # fmt: skip


def _model_fields(model_dir: Path, manifest: Manifest, run_dir: Path | None) -> dict[str, Any]:
    manifest_path = model_dir / MANIFEST_NAME
    model_path = model_dir / MODEL_NAME
    if not model_path.is_file():
        raise ReportError(f"{model_path} not found (the model named in {manifest_path})")
    size = model_path.stat().st_size + sum(
        (model_dir / extra).stat().st_size
        for extra in EXTERNAL_DATA_NAMES
        if (model_dir / extra).is_file()
    )
    parameters = manifest.parameters
    if not isinstance(parameters, int) or parameters < 0:
        raise ReportError(f"{manifest_path}: parameters must be a count >= 0, got {parameters!r}")
    test_path = manifest.test_path
    mean_tokens = _mean_tokens(model_dir, manifest, test_path)
    return {
        "name": manifest.name,
        "family": manifest.family,
        "head": manifest.head,
        "precision": manifest.precision,
        "base_model": manifest.base_model,
        "dataset": manifest.dataset.get("name") or "test",
        "accuracy": _fraction(manifest.metrics, "accuracy", manifest_path, "metrics"),
        "macro_f1": _fraction(manifest.metrics, "macro_f1", manifest_path, "metrics"),
        "max_abs_logit_diff_vs_torch": _number(
            manifest.parity, "max_abs_logit_diff_vs_torch", manifest_path, "parity"
        ),
        "label_agreement_vs_fp32": _fraction(
            manifest.parity, "label_agreement_vs_fp32", manifest_path, "parity"
        ),
        "model_mb": size / BYTES_PER_MB,
        # 0 is the manifest's "not recorded" default; no real model has zero parameters.
        "parameters_m": parameters / 1e6 if parameters else None,
        "mean_tokens": mean_tokens,
        "gflops_per_example": (
            2 * parameters * mean_tokens / 1e9 if parameters and mean_tokens else None
        ),
        "train_seconds": _train_seconds(run_dir),
        "model_dir": str(model_dir),
        "run_dir": None if run_dir is None else str(run_dir),
    }


def _load_fields(loadtest_dir: Path | None, point: LoadPoint | None) -> dict[str, Any]:
    keys = (
        "p50_ms", "p95_ms", "p99_ms", "rps", "texts_per_s", "users", "batch", "length",
        "requests", "failures", "server_cpu_percent", "p95_1user_ms", "latency_target_ms",
        "texts_per_s_at_slo", "machine", "loadtest_dir", "step_dir",
    )  # fmt: skip
    if point is None:
        return {**dict.fromkeys(keys), "meets_slo": False, "load_method": ""}
    s = point.point
    return {
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "rps": s.rps,
        "texts_per_s": s.texts_per_s,
        "users": s.users,
        "batch": s.batch,
        "length": s.length,
        "requests": s.requests,
        "failures": s.failures,
        "server_cpu_percent": s.server_cpu_percent,
        "p95_1user_ms": point.p95_lightest_ms,
        "latency_target_ms": point.latency_target_ms,
        "meets_slo": point.meets_slo,
        "texts_per_s_at_slo": s.texts_per_s if point.meets_slo else None,
        "machine": point.machine,
        "loadtest_dir": str(loadtest_dir),
        "step_dir": point.step_dir,
        "load_method": point.method,
    }


def _run_dir(manifest: Manifest, override: Path | None) -> Path | None:
    if override is not None:
        return override
    return Path(manifest.source_run) if manifest.source_run else None


def _mean_tokens(model_dir: Path, manifest: Manifest, test_path: Path | None) -> float | None:
    """Mean tokens per test text as the server sees it (template applied, truncated)."""
    if test_path is None or not test_path.is_file():
        return None
    tokenizer_path = Path(model_dir) / TOKENIZER_NAME
    if not tokenizer_path.is_file():
        return None
    encoder = TextEncoder.from_file(tokenizer_path, manifest.preprocessing)
    column = manifest.dataset.get("text_column") or "text"
    texts = read_texts(test_path, text_column=column)[:FLOPS_SAMPLE]
    lengths = [len(ids) for ids in encoder.encode(texts).ids]
    return sum(lengths) / len(lengths)


def _train_seconds(run_dir: Path | None) -> float | None:
    """`train.seconds` from the run's metrics.json; None when the run is not on this machine."""
    if run_dir is None:
        return None
    path = run_dir / RUN_METRICS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, dict) or "seconds" not in train:
        return None
    seconds = train["seconds"]
    if not _is_number(seconds) or seconds < 0:
        raise ReportError(f"{path}: train.seconds must be a number >= 0, got {seconds!r}")
    return float(seconds)


def _number(section: dict[str, Any], key: str, path: Path, where: str) -> float | None:
    if key not in section or section[key] is None:
        return None
    value = section[key]
    if not _is_number(value):
        raise ReportError(f"{path}: {where}.{key} must be a number, got {value!r}")
    return float(value)


def _fraction(section: dict[str, Any], key: str, path: Path, where: str) -> float | None:
    value = _number(section, key, path, where)
    # Catch a percentage stored where a fraction belongs: it would print as 9150%.
    if value is not None and not 0.0 <= value <= 1.0:
        raise ReportError(f"{path}: {where}.{key} must be a fraction in 0..1, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
