"""The answer page's inputs: models, load tests and runs of several datasets, joined per dataset
and priced at each latency target.

Inputs come in groups (one pipeline output directory each, or one flat list of model and
load-test directories). Within a group a load test joins its model by name, as in the
single-dataset report; where several datasets' models share a name (`minilm-fp32` on every
dataset), the load test's texts file (recorded in every step) picks the model whose test split
it is. Each model is priced at every latency target: the sweep step with the most throughput
whose p95 met that target, so a model that misses a tight target still has a cost at a
looser one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_NAME, Manifest
from loadtests.run import SUMMARY_NAME, LoadSummary, LoadTestError
from loadtests.sweep import DEFAULT_SLO_P95_MS, SWEEP_NAME, SweepSummary
from reports.cost import PriceTable, costs_for
from reports.inputs import ReportError, _model_fields, _run_dir, read_load_point, read_manifest
from reports.per_class import ClassScores, class_scores
from reports.references import Reference, headline_metric, reference_for
from reports.rows import RUN_METRICS


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputGroup:
    """Model dirs and load-test dirs whose names are unique within the group."""

    model_dirs: list[Path]
    loadtest_dirs: list[Path] = dataclasses.field(default_factory=list)
    refused_dirs: list[Path] = dataclasses.field(default_factory=list)  # the gate's refusals


def group_from_output(out_dir: Path) -> InputGroup:
    """A pipeline output directory (`smallcls compare`/`demo`): its accepted models
    (models/*/manifest.json; models/refused/ holds those the gate refused) and load tests."""
    out_dir = Path(out_dir)
    models = sorted(p.parent for p in out_dir.glob(f"models/*/{MANIFEST_NAME}"))
    if not models:
        raise ReportError(f"{out_dir}/models/ holds no model directory ({MANIFEST_NAME})")
    tests = sorted(
        p
        for p in out_dir.glob("loadtests/*")
        if (p / SWEEP_NAME).is_file() or (p / SUMMARY_NAME).is_file()
    )
    refused = sorted(p.parent for p in out_dir.glob(f"models/refused/*/{MANIFEST_NAME}"))
    return InputGroup(model_dirs=models, loadtest_dirs=tests, refused_dirs=refused)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refused:
    """An export the accuracy gate refused: not served, so not load-tested or priced."""

    dataset: str
    name: str
    precision: str
    reasons: list[str]
    source: str  # its manifest.json


def _refused(model_dir: Path) -> Refused:
    manifest = read_manifest(model_dir)
    gate = manifest.gate or {}
    reasons = gate.get("reasons") if isinstance(gate, dict) else None
    return Refused(
        dataset=manifest.dataset.get("name") or "test", name=manifest.name,
        precision=manifest.precision, reasons=[str(r) for r in reasons or []],
        source=str(model_dir / MANIFEST_NAME),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetPoint:
    """A model's operating point at one p95 target."""

    target_ms: float
    meets: bool
    users: int | None  # the step priced (the lightest step when none met the target)
    p50_ms: float | None
    p95_ms: float | None
    texts_per_s: float | None  # at the target; None when no step met it
    usd_per_million: float | None  # on the price table's measured instance
    step_summary: str | None  # the step's summary.json


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurvePoint:
    users: int
    texts_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    failure_rate: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One exported model of one dataset, with all it was measured at."""

    dataset: str
    name: str
    family: str
    head: str
    precision: str
    base_model: str
    metric: str  # the dataset's headline metric
    score: float | None  # that metric on the test split, fraction 0..1
    accuracy: float | None
    macro_f1: float | None
    label_agreement_vs_fp32: float | None
    model_mb: float
    parameters_m: float | None
    train_seconds: float | None
    train_rows: int | None
    test_rows: int | None
    machine: str | None
    targets: list[TargetPoint]
    curve: list[CurvePoint]
    classes: ClassScores | None
    model_dir: str
    loadtest_dir: str | None
    run_dir: str | None
    sources: list[str]  # every file a number of this entry was read from

    def at(self, target_ms: float) -> TargetPoint | None:
        return next((t for t in self.targets if t.target_ms == target_ms), None)

    def group(self) -> str:
        """fp32 and its quantized variants share this: the run, else the name's stem."""
        return self.run_dir or self.name.removesuffix(f"-{self.precision}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Collected:
    datasets: dict[str, list[Entry]]  # dataset -> entries, in the order given
    references: dict[str, Reference | None]
    refused: dict[str, list[Refused]]  # dataset -> exports the gate refused
    targets: list[float]  # ms, ascending
    primary_target: float  # the first target named: the one the summary and answers use
    prices: PriceTable


def collect(
    groups: Sequence[InputGroup], prices: PriceTable, latency_targets: Sequence[float] | None
) -> Collected:
    """Read every group, join and price each model at each target."""
    if not groups or not any(g.model_dirs for g in groups):
        raise ReportError("no model directories given")
    if latency_targets is not None and (
        not latency_targets or any(t <= 0 for t in latency_targets)
    ):
        raise ReportError(f"latency targets must be > 0 ms, got {list(latency_targets)}")
    joined = [pair for g in groups for pair in _join(g)]
    if latency_targets:
        targets = list(latency_targets)
    else:  # each sweep's own SLO
        slos = {_sweep_slo(lt) for _, _, lt in joined if lt is not None}
        targets = sorted(slos) or [DEFAULT_SLO_P95_MS]
    datasets: dict[str, list[Entry]] = {}
    for model_dir, manifest, loadtest_dir in joined:
        entry = _entry(model_dir, manifest, loadtest_dir, sorted(set(targets)), prices)
        datasets.setdefault(entry.dataset, []).append(entry)
    refused: dict[str, list[Refused]] = {}
    for r in (_refused(Path(d)) for g in groups for d in g.refused_dirs):
        refused.setdefault(r.dataset, []).append(r)
    return Collected(
        datasets=datasets,
        references={d: reference_for(d) for d in datasets},
        refused=refused,
        targets=sorted(set(targets)),
        primary_target=targets[0],
        prices=prices,
    )


def _join(group: InputGroup) -> list[tuple[Path, Manifest, Path | None]]:
    models = [(Path(d), read_manifest(Path(d))) for d in group.model_dirs]
    by_name: dict[str, list[tuple[Path, Manifest]]] = {}
    for model_dir, manifest in models:
        by_name.setdefault(manifest.name, []).append((model_dir, manifest))
    found: dict[Path, Path] = {}
    for loadtest_dir in map(Path, group.loadtest_dirs):
        model, texts = _loadtest_identity(loadtest_dir)
        candidates = by_name.get(model, [])
        if len(candidates) > 1:  # the same name on several datasets: the texts file decides
            candidates = [c for c in candidates if _same_file(c[1].test_path, texts)]
        if len(candidates) != 1:
            raise ReportError(
                f"{loadtest_dir} load-tested {model!r} with texts from {texts}: "
                + (
                    "none of the model dirs names that model"
                    if not by_name.get(model)
                    else "several model dirs of that name match; give each dataset's "
                    "models and load tests as their own group (--from DIR)"
                )
            )
        model_dir = candidates[0][0]
        if model_dir in found:
            raise ReportError(
                f"{found[model_dir]} and {loadtest_dir} both load-tested {model_dir}; pass one"
            )
        found[model_dir] = loadtest_dir
    return [(d, m, found.get(d)) for d, m in models]


def _loadtest_identity(loadtest_dir: Path) -> tuple[str, str | None]:
    """(model name, texts file) of a load-test directory."""
    try:
        if (loadtest_dir / SWEEP_NAME).is_file():
            sweep = SweepSummary.read(loadtest_dir)
            texts = next((s["texts_source"] for s in sweep.steps if s.get("texts_source")), None)
            return sweep.model, texts
        summary = LoadSummary.read(loadtest_dir)
    except LoadTestError as exc:
        raise ReportError(str(exc)) from exc
    return summary.model, summary.texts_source


def _same_file(a: Path | str | None, b: Path | str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _sweep_slo(loadtest_dir: Path) -> float:
    if (loadtest_dir / SWEEP_NAME).is_file():
        return SweepSummary.read(loadtest_dir).slo_p95_ms
    return DEFAULT_SLO_P95_MS


def _entry(
    model_dir: Path,
    manifest: Manifest,
    loadtest_dir: Path | None,
    targets: list[float],
    prices: PriceTable,
) -> Entry:
    run_dir = _run_dir(manifest, None)
    if run_dir is not None and not run_dir.is_dir():
        run_dir = None  # a run moved from another machine: its figures are in the manifest
    base = _model_fields(model_dir, manifest, run_dir)
    dataset = base["dataset"]
    metric, score = headline_metric(dataset, manifest.metrics)
    sources = [f"accuracy, per-class F1 and confusion matrix: `{model_dir / MANIFEST_NAME}`"]
    classes = class_scores(manifest, model_dir, run_dir)
    if classes is not None and classes.source != str(model_dir / MANIFEST_NAME):
        sources.append(f"per-class F1 and confusion matrix: `{classes.source}`")
    if base["train_seconds"] is not None:
        sources.append(f"training time: `{run_dir / RUN_METRICS}`")  # type: ignore[operator]
    points: list[TargetPoint] = []
    curve: list[CurvePoint] = []
    machine = None
    if loadtest_dir is not None:
        curve = _curve(loadtest_dir)
        for target in targets:
            point = read_load_point(loadtest_dir, target)
            machine = point.machine
            s = point.point
            tps = s.texts_per_s if point.meets_slo else None
            cost = costs_for(
                tps, prices, machine=machine or "this machine", cpu_s_per_text=point.cpu_s_per_text
            )
            measured = next(c for c in cost if c.instance == prices.measured_as)
            step = None if point.step_dir is None else str(Path(point.step_dir) / SUMMARY_NAME)
            points.append(
                TargetPoint(
                    target_ms=target,
                    meets=point.meets_slo,
                    users=s.users,
                    p50_ms=s.p50_ms,
                    p95_ms=s.p95_ms,
                    texts_per_s=tps,
                    usd_per_million=measured.usd_per_million,
                    step_summary=step or point.source,
                )
            )
        sweep = loadtest_dir / SWEEP_NAME
        steps = ", ".join(
            f"at {p.target_ms:g} ms `{p.step_summary}`" + ("" if p.meets else " (missed)")
            for p in points
        )
        sources.append(
            f"latency curve: `{sweep if sweep.is_file() else loadtest_dir / SUMMARY_NAME}`; "
            f"operating points: {steps}"
        )
    return Entry(
        dataset=dataset,
        name=manifest.name,
        family=manifest.family,
        head=manifest.head,
        precision=manifest.precision,
        base_model=manifest.base_model,
        metric=metric,
        score=score,
        accuracy=base["accuracy"],
        macro_f1=base["macro_f1"],
        label_agreement_vs_fp32=base["label_agreement_vs_fp32"],
        model_mb=base["model_mb"],
        parameters_m=base["parameters_m"],
        train_seconds=base["train_seconds"],
        train_rows=_train_rows(run_dir),
        test_rows=_int(manifest.metrics.get("rows")),
        machine=machine,
        targets=points,
        curve=curve,
        classes=classes,
        model_dir=str(model_dir),
        loadtest_dir=None if loadtest_dir is None else str(loadtest_dir),
        run_dir=None if run_dir is None else str(run_dir),
        sources=sources,
    )


def _curve(loadtest_dir: Path) -> list[CurvePoint]:
    """Every step of the sweep (or the one run), in order of users."""
    if (loadtest_dir / SWEEP_NAME).is_file():
        steps = SweepSummary.read(loadtest_dir).step_summaries(source=str(loadtest_dir))
    else:
        steps = [LoadSummary.read(loadtest_dir)]
    return [
        CurvePoint(
            users=s.users,
            texts_per_s=s.texts_per_s,
            p50_ms=s.p50_ms,
            p95_ms=s.p95_ms,
            failure_rate=s.failure_rate,
        )
        for s in sorted(steps, key=lambda s: s.users)
    ]


def _train_rows(run_dir: Path | None) -> int | None:
    path = None if run_dir is None else run_dir / RUN_METRICS
    if path is None or not path.is_file():
        return None
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    train = data.get("train") if isinstance(data, dict) else None
    return _int(train.get("rows")) if isinstance(train, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
