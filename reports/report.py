"""Join exported models' manifests, load tests and training runs into one comparison.

Writes `report.md` (tables with units in the headers, the recommendation, where each number
came from), `report.csv` (every row as raw numbers) and `report.html` (the same, with Pareto
plots; self-contained, opens from disk without a network). Rows join on the manifest's
`name`, which is also the model name a load test sends and records.

A load-test directory is either a sweep (`sweep.json`, loadtests/sweep.py) or one run
(`summary.json`). A row's operating point is the sweep step with the most throughput whose p95
met the latency target (recomputed from the steps when the report's target differs from the
sweep's SLO); a model that met it at no step is shown at its lightest step, without a cost.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

from core.manifest import (
    MANIFEST_NAME,
    MODEL_NAME,
    TOKENIZER_NAME,
    Family,
    Manifest,
    Precision,
    fill_template,
)
from loadtests.run import SUMMARY_NAME, LoadSummary, LoadTestError
from loadtests.sweep import DEFAULT_SLO_P95_MS, SWEEP_NAME, SweepSummary, best_at_slo, meets_slo
from loadtests.texts import read_texts
from reports.cost import DEFAULT_PRICES, Cost, PriceTable, costs_for, load_prices
from reports.select import Recommendation, pareto_front, recommend

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
REPORT_HTML = "report.html"
RUN_METRICS = "metrics.json"
RUN_CONFIG = "config.json"
# Files ONNX writes beside the graph when it exceeds 2 GB; they are part of the model's size.
EXTERNAL_DATA_NAMES = (f"{MODEL_NAME}.data", f"{MODEL_NAME}_data")
BYTES_PER_MB = 1_000_000  # decimal megabytes, as file browsers and the Hub show sizes
NA = "n/a"
DEFAULT_ACCURACY_FLOOR = 0.85
# Texts tokenized to estimate FLOPs per example: enough for a stable mean, quick to tokenize.
FLOPS_SAMPLE = 1000

# Rows sort by family in the order the manifest declares (plain encoders first), then by
# precision (fp32 before int8); unknown values go last, alphabetically.
FAMILY_ORDER = typing.get_args(Family)
PRECISION_ORDER = typing.get_args(Precision)
FAMILY_LABELS = {
    "encoder": "encoder",
    "extracted_encoder": "extracted encoder",
    "causal_lm": "causal LM",
}


class ReportError(ValueError):
    """An input the report cannot use; the message names the file."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportRow:
    name: str
    family: str
    head: str
    precision: str
    base_model: str
    dataset: str  # the test split's folder name (e.g. sst2), "test" when unknown
    accuracy: float | None  # fraction 0..1 on the test split
    macro_f1: float | None  # fraction 0..1
    max_abs_logit_diff_vs_torch: float | None
    label_agreement_vs_fp32: float | None  # fraction 0..1
    # The operating point: the load-test step at the latency target (or the only run).
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float | None  # requests per second
    texts_per_s: float | None
    users: int | None
    batch: int | None  # texts per request in the load test
    length: str | None  # length bucket of the texts sent
    requests: int | None
    failures: int | None
    server_cpu_percent: float | None  # 100 = one core
    p95_1user_ms: float | None  # lightest step of a sweep: latency without queueing
    latency_target_ms: float | None
    meets_slo: bool  # p95 <= target (and failures within limit) at the operating point
    texts_per_s_at_slo: float | None  # the throughput that is priced
    usd_per_million: float | None  # on the price table's measured instance type
    cost_instance: str | None
    machine: str | None  # what the load test ran on
    model_mb: float
    parameters_m: float | None  # millions; None when the manifest does not say
    mean_tokens: float | None  # mean tokens per test text after the template, truncated
    gflops_per_example: float | None  # estimate: 2 x parameters x mean_tokens / 1e9
    train_seconds: float | None
    model_dir: str
    loadtest_dir: str | None
    step_dir: str | None  # the sweep step the operating point comes from
    run_dir: str | None


@dataclasses.dataclass(frozen=True)
class ReportResult:
    markdown_path: Path
    csv_path: Path
    markdown: str  # the summary table alone, as written into report.md
    rows: list[ReportRow]
    html_path: Path | None = None
    recommendation: Recommendation | None = None
    costs: dict[str, list[Cost]] = dataclasses.field(default_factory=dict)  # row key -> costs


CSV_COLUMNS = [f.name for f in dataclasses.fields(ReportRow)]


def _md_columns(cost_instance: str) -> list[tuple[str, typing.Callable[[ReportRow], str]]]:
    """(header, row -> cell text): the summary table of report.md and report.html."""
    return [
        ("Model", lambda r: r.name),
        ("Family", lambda r: FAMILY_LABELS.get(r.family, r.family)),
        ("Precision", lambda r: r.precision),
        ("Dataset", lambda r: r.dataset),
        ("Accuracy (%)", lambda r: _pct(r.accuracy)),
        ("Macro-F1 (%)", lambda r: _pct(r.macro_f1)),
        ("p50 (ms)", lambda r: _num(r.p50_ms, ".0f")),
        ("p95 (ms)", lambda r: _num(r.p95_ms, ".0f")),
        ("p95 at lightest load (ms)", lambda r: _num(r.p95_1user_ms, ".0f")),
        ("Users", lambda r: _num(r.users, "d")),
        ("Throughput (req/s)", lambda r: _num(r.rps, ".1f")),
        ("Throughput at SLO (texts/s)", lambda r: _num(r.texts_per_s_at_slo, ".1f")),
        (f"$ per million ({cost_instance})", lambda r: _num(r.usd_per_million, ".4f")),
        ("Server CPU (%)", lambda r: _num(r.server_cpu_percent, ".0f")),
        ("Failures (of requests)", _failures),
        ("Size (MB)", lambda r: _num(r.model_mb, ".1f")),
        ("Params (M)", lambda r: _num(r.parameters_m, ".1f")),
        ("GFLOPs per example (est.)", lambda r: _num(r.gflops_per_example, ".2f")),
        ("Label agreement vs fp32 (%)", lambda r: _pct(r.label_agreement_vs_fp32)),
        ("Train time (s)", lambda r: _num(r.train_seconds, ".0f")),
    ]


def build_report(
    *,
    model_dirs: list[Path],
    loadtest_dirs: list[Path],
    out_dir: Path,
    run_dirs: list[Path] | None = None,
    prices: PriceTable | Path | None = None,
    accuracy_floor: float = DEFAULT_ACCURACY_FLOOR,
    latency_target_ms: float | None = None,
    metric: str = "accuracy",
    html: bool = True,
) -> ReportResult:
    """Write report.md, report.csv and (with `html`) report.html under out_dir.

    One row per model and load test (a model without a load test gets one row with n/a
    latency). `run_dirs`, when given, pairs with `model_dirs` by position and replaces each
    manifest's `source_run` (for runs moved from another machine). `latency_target_ms`
    defaults to each sweep's own SLO (50 ms for single runs). Costs use `prices`
    (configs/prices.yaml by default).
    """
    if not model_dirs:
        raise ReportError("no model directories given")
    if run_dirs is not None and len(run_dirs) != len(model_dirs):
        raise ReportError(
            f"run_dirs pairs with model_dirs by position: got {len(run_dirs)} run dirs "
            f"for {len(model_dirs)} model dirs"
        )
    if not 0.0 <= accuracy_floor <= 1.0:
        raise ReportError(f"the accuracy floor is a fraction in 0..1, got {accuracy_floor}")
    if latency_target_ms is not None and latency_target_ms <= 0:
        raise ReportError(f"the latency target must be > 0 ms, got {latency_target_ms}")
    price_table = (
        prices if isinstance(prices, PriceTable) else load_prices(prices or DEFAULT_PRICES)
    )

    manifests: dict[str, tuple[Path, Manifest]] = {}
    for model_dir in map(Path, model_dirs):
        manifest = read_manifest(model_dir)
        if manifest.name in manifests:
            other = manifests[manifest.name][0]
            raise ReportError(
                f"{model_dir / MANIFEST_NAME} and {other / MANIFEST_NAME} both name the model "
                f"{manifest.name!r}; load tests could not be told apart"
            )
        manifests[manifest.name] = (model_dir, manifest)

    loadtests: dict[str, list[tuple[Path, LoadPoint]]] = {name: [] for name in manifests}
    for loadtest_dir in map(Path, loadtest_dirs):
        point = read_load_point(loadtest_dir, latency_target_ms)
        if point.model not in manifests:
            raise ReportError(
                f"{point.source} load-tested {point.model!r}, which none of "
                f"the model dirs names (known: {sorted(manifests)})"
            )
        loadtests[point.model].append((loadtest_dir, point))

    rows: list[ReportRow] = []
    costs: dict[str, list[Cost]] = {}
    for index, (name, (model_dir, manifest)) in enumerate(manifests.items()):
        run_dir = _run_dir(manifest, None if run_dirs is None else Path(run_dirs[index]))
        base = _model_fields(model_dir, manifest, run_dir)
        for loadtest_dir, point in loadtests[name] or [(None, None)]:
            load = _load_fields(loadtest_dir, point)
            row_costs = costs_for(
                load["texts_per_s_at_slo"], price_table, machine=load["machine"] or "this machine"
            )
            measured = next(c for c in row_costs if c.instance == price_table.measured_as)
            row = ReportRow(
                **base,
                **load,
                usd_per_million=measured.usd_per_million,
                cost_instance=price_table.measured_as,
            )
            rows.append(row)
            costs[row_key(row)] = row_costs
    rows.sort(key=_sort_key)

    targets = {r.latency_target_ms for r in rows if r.latency_target_ms is not None}
    target = latency_target_ms or (max(targets) if targets else DEFAULT_SLO_P95_MS)
    rec = recommend(
        rows, accuracy_floor=accuracy_floor, latency_target_ms=target, metric=metric,
        instance=price_table.measured_as,
    )  # fmt: skip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, price_table.measured_as)
    context = _Context(
        rows=rows, costs=costs, prices=price_table, recommendation=rec,
        accuracy_floor=accuracy_floor, latency_target_ms=target, metric=metric,
    )  # fmt: skip
    md_path = out_dir / REPORT_MD
    md_path.write_text(_markdown_document(table, context), encoding="utf-8")
    csv_path = out_dir / REPORT_CSV
    _write_csv(csv_path, rows)
    html_path = None
    if html:
        from reports.html import render_html  # plotly is imported only when a page is made

        html_path = out_dir / REPORT_HTML
        html_path.write_text(render_html(context), encoding="utf-8")
    return ReportResult(
        markdown_path=md_path, csv_path=csv_path, markdown=table, rows=rows,
        html_path=html_path, recommendation=rec, costs=costs,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Context:
    """Everything a rendering (Markdown, HTML) needs."""

    rows: list[ReportRow]
    costs: dict[str, list[Cost]]
    prices: PriceTable
    recommendation: Recommendation
    accuracy_floor: float
    latency_target_ms: float
    metric: str

    def frontier(self, x: str) -> list[int]:
        """Indices into rows on the Pareto frontier of `metric` against column `x`."""
        # A cost exists only at the SLO; a model that never met it has no place on that plot.
        points = [
            (getattr(r, x), getattr(r, self.metric))
            if r.meets_slo or x != "usd_per_million"
            else (None, None)
            for r in self.rows
        ]
        return pareto_front(points)

    def quantization(self) -> list[dict[str, Any]]:
        return quantization_table(self.rows, self.metric)


def row_key(row: ReportRow) -> str:
    return f"{row.name}|{row.loadtest_dir or ''}"


def markdown_table(rows: list[ReportRow], cost_instance: str = "measured instance") -> str:
    columns = _md_columns(cost_instance)
    headers = [header for header, _ in columns]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        cells = [cell(row).replace("|", "\\|") for _, cell in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_cells(rows: list[ReportRow], cost_instance: str) -> tuple[list[str], list[list[str]]]:
    columns = _md_columns(cost_instance)
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


def quantization_table(rows: list[ReportRow], metric: str = "accuracy") -> list[dict[str, Any]]:
    """Each non-fp32 variant against the fp32 export of the same run: metric delta (points),
    throughput and cost ratios. Pairs on the source run, else on the name without precision."""

    def group(row: ReportRow) -> str:
        return row.run_dir or row.name.removesuffix(f"-{row.precision}")

    fp32 = {group(r): r for r in rows if r.precision == "fp32"}
    out = []
    for row in rows:
        ref = fp32.get(group(row))
        if row.precision == "fp32" or ref is None:
            continue
        a, b = getattr(ref, metric), getattr(row, metric)
        out.append({
            "model": row.name,
            "reference": ref.name,
            "precision": row.precision,
            "metric_fp32": a,
            "metric_variant": b,
            "delta_points": None if a is None or b is None else 100 * (b - a),
            "label_agreement_vs_fp32": row.label_agreement_vs_fp32,
            "throughput_ratio": _ratio(row.texts_per_s_at_slo, ref.texts_per_s_at_slo),
            "cost_ratio": _ratio(row.usd_per_million, ref.usd_per_million),
            "size_ratio": _ratio(row.model_mb, ref.model_mb),
        })  # fmt: skip
    return out


def read_manifest(model_dir: Path) -> Manifest:
    """The manifest, ignoring keys this version does not know: other stages may add optional
    fields (new variants, gate results) and the report should still read what it needs."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        return Manifest.read(model_dir)  # raises ManifestError naming the file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
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


def read_load_point(loadtest_dir: Path, latency_target_ms: float | None) -> LoadPoint:
    loadtest_dir = Path(loadtest_dir)
    try:
        if (loadtest_dir / SWEEP_NAME).is_file():
            sweep = SweepSummary.read(loadtest_dir)
            steps = sweep.step_summaries(source=str(loadtest_dir / SWEEP_NAME))
            if not steps:
                raise ReportError(f"{loadtest_dir / SWEEP_NAME} has no steps")
            target = latency_target_ms or sweep.slo_p95_ms
            best = best_at_slo(steps, target, sweep.max_failure_rate)
            lightest = min(steps, key=lambda s: s.users)
            point = best or lightest
            step_dir = next(s["dir"] for s in sweep.steps if s["users"] == point.users)
            return LoadPoint(
                model=sweep.model, source=str(loadtest_dir / SWEEP_NAME), point=point,
                step_dir=str(loadtest_dir / step_dir), meets_slo=best is not None,
                latency_target_ms=target, p95_lightest_ms=lightest.p95_ms,
                machine=sweep.machine,
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
    test_path = _test_path(run_dir)
    mean_tokens = _mean_tokens(model_dir, manifest, test_path)
    return {
        "name": manifest.name,
        "family": manifest.family,
        "head": manifest.head,
        "precision": manifest.precision,
        "base_model": manifest.base_model,
        "dataset": test_path.parent.name if test_path is not None else "test",
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
        return {**dict.fromkeys(keys), "meets_slo": False}
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
    }


def _run_dir(manifest: Manifest, override: Path | None) -> Path | None:
    if override is not None:
        return override
    return Path(manifest.source_run) if manifest.source_run else None


def _test_path(run_dir: Path | None) -> Path | None:
    """The run's test split, found as written or relative to the run's parents (a demo's runs
    sit in <project>/<output>/runs/<name> and record paths relative to <project>)."""
    if run_dir is None or not (run_dir / RUN_CONFIG).is_file():
        return None
    try:
        config = json.loads((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{run_dir / RUN_CONFIG} is not valid JSON: {exc}") from exc
    test = config.get("test_path") if isinstance(config, dict) else None
    if not isinstance(test, str) or not test:
        return None
    candidates = [Path(test)] + [parent / test for parent in Path(run_dir).resolve().parents]
    return next((c for c in candidates if c.is_file()), Path(test))


def _mean_tokens(model_dir: Path, manifest: Manifest, test_path: Path | None) -> float | None:
    """Mean tokens per test text as the server sees it (template applied, truncated)."""
    if test_path is None or not test_path.is_file():
        return None
    tokenizer_path = Path(model_dir) / TOKENIZER_NAME
    if not tokenizer_path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = fill_template(manifest.prompt_template, read_texts(test_path)[:FLOPS_SAMPLE])
    lengths = [min(len(e.ids), manifest.max_length) for e in tokenizer.encode_batch(texts)]
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _sort_key(row: ReportRow) -> tuple[Any, ...]:
    def rank(value: str, order: tuple[str, ...]) -> tuple[int, str]:
        return (order.index(value), "") if value in order else (len(order), value)

    return (
        rank(row.family, FAMILY_ORDER),
        rank(row.precision, PRECISION_ORDER),
        row.name,
        row.users or 0,
        row.batch or 0,
    )


def _write_csv(path: Path, rows: list[ReportRow]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            # Empty cells for missing values: pandas and spreadsheets read them as NaN.
            writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})


def method_notes(ctx: _Context) -> list[str]:
    """How each column was made; shared by the Markdown and HTML pages."""
    machines = sorted({r.machine for r in ctx.rows if r.machine})
    measured = ctx.prices.measured
    return [
        f"Accuracy, macro-F1 (test split), parity and parameters: each model directory's "
        f"`{MANIFEST_NAME}`; the accuracy is that of the exported file, scored through the "
        "serving code.",
        f"Latency and throughput: Locust (no wait time) against the BentoML service; each row's "
        f"operating point is the sweep step with the most throughput whose p95 <= "
        f"{ctx.latency_target_ms:g} ms with at most 1% failed requests. Percentiles are whole "
        "milliseconds. A model that met the target at no step shows its lightest step and no "
        "cost. The load generator ran on the same machine as the server.",
        "Measured on: " + ("; ".join(machines) if machines else "not recorded (single runs)") + ".",
        f"$ per million classifications = $/hour / (texts/s at the SLO x 3600) x 10^6, priced "
        f"as {measured.name} (${measured.usd_per_hour}/h, {measured.vcpus} vCPUs; "
        f"{measured.source}). Other instance types: see the cost table (derived figures assume "
        "throughput scales with vCPUs; GPU types are not measured).",
        "GFLOPs per example: an estimate, 2 x parameters x mean tokens of the test texts "
        "(template applied, truncated at max length); it counts embedding parameters as if "
        "they were matrix multiplies, so it overstates models with large vocabularies.",
        f"Size: bytes of `{MODEL_NAME}` (plus external data) / 10^6. Server CPU: CPU time of the "
        "server's process tree during the step / wall time (100% = one core).",
    ]


def _markdown_document(table: str, ctx: _Context) -> str:
    parts = ["# Model comparison", "", "## Recommendation", "", ctx.recommendation.message, ""]
    parts += [
        f"Accuracy floor {ctx.accuracy_floor:.1%} ({ctx.metric}), latency target p95 <= "
        f"{ctx.latency_target_ms:g} ms.",
        "",
        "## Summary",
        "",
        table,
        "## Pareto frontier",
        "",
    ]
    for x, label in (("usd_per_million", "cost"), ("p95_ms", "p95 latency")):
        names = [ctx.rows[i].name for i in ctx.frontier(x)]
        parts.append(f"- {ctx.metric} against {label}: " + (", ".join(names) or "none"))
    parts += ["", "## Accuracy cost of quantization", ""]
    quant = ctx.quantization()
    if quant:
        parts += [
            f"| Variant | vs | {ctx.metric} change (points) | Label agreement vs fp32 (%) | "
            "Throughput at SLO (x fp32) | Cost (x fp32) | Size (x fp32) |",
            "|---|---|---|---|---|---|---|",
        ]
        for q in quant:
            parts.append(
                f"| {q['model']} | {q['reference']} | {_num(q['delta_points'], '+.2f')} | "
                f"{_pct(q['label_agreement_vs_fp32'])} | {_num(q['throughput_ratio'], '.2f')} | "
                f"{_num(q['cost_ratio'], '.2f')} | {_num(q['size_ratio'], '.2f')} |"
            )
    else:
        parts.append("No fp32/quantized pairs among the models.")
    parts += ["", "## Cost per instance type ($ per million classifications)", ""]
    parts += ["| Model | Instance | $ per million | Basis | How |", "|---|---|---|---|---|"]
    for row in ctx.rows:
        for c in ctx.costs[row_key(row)]:
            parts.append(
                f"| {row.name} | {c.instance} | {_num(c.usd_per_million, '.4f')} | {c.basis} | "
                f"{c.note} |"
            )
    for ref in ctx.prices.references:
        parts.append(
            f"| (reference) {ref.get('what', '')} | | {ref.get('usd_per_million', NA)} | "
            f"published | {ref.get('source', '')} |"
        )
    parts += ["", "## Method", ""] + [f"- {n}" for n in method_notes(ctx)]
    parts += ["", "## Sources", "", *source_lines(ctx.rows)]
    return "\n".join(parts) + "\n"


def source_lines(rows: list[ReportRow]) -> list[str]:
    lines = []
    for row in rows:
        parts = [f"manifest `{Path(row.model_dir) / MANIFEST_NAME}`"]
        if row.loadtest_dir is None:
            parts.append("no load test")
        else:
            sweep = Path(row.loadtest_dir) / SWEEP_NAME
            parts.append(
                f"load test `{sweep if sweep.is_file() else Path(row.loadtest_dir) / SUMMARY_NAME}`"
            )
            if row.step_dir:
                parts.append(f"step `{Path(row.step_dir) / SUMMARY_NAME}`")
        if row.train_seconds is not None and row.run_dir is not None:
            parts.append(f"run `{Path(row.run_dir) / RUN_METRICS}`")
        else:
            parts.append("no training metrics found")
        label = row.name if row.users is None else f"{row.name} ({row.users} users)"
        lines.append(f"- {label}: " + ", ".join(parts))
    return lines


def _pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.2f}"


def _num(value: float | int | None, spec: str) -> str:
    return NA if value is None else format(value, spec)


def _failures(row: ReportRow) -> str:
    if row.failures is None or row.requests is None:
        return NA
    return f"{row.failures} of {row.requests}"
