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
import typing
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_NAME, Family, Manifest, Precision
from loadtests.sweep import DEFAULT_SLO_P95_MS
from reports.cost import DEFAULT_PRICES, Cost, PriceTable, costs_for, load_prices
from reports.inputs import (
    LoadPoint,
    ReportError,
    _load_fields,
    _model_fields,
    _run_dir,
    read_load_point,
    read_manifest,
)
from reports.references import cited_price_references
from reports.rows import (
    NA,
    ReportContext,
    ReportRow,
    _num,
    _pct,
    markdown_table,
    method_notes,
    row_key,
    source_lines,
)
from reports.select import Recommendation, recommend

# Importable from here as before the split into rows.py and inputs.py.
__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ACCURACY_FLOOR",
    "REPORT_CSV",
    "REPORT_HTML",
    "REPORT_MD",
    "LoadPoint",
    "ReportContext",
    "ReportError",
    "ReportResult",
    "ReportRow",
    "build_report",
    "markdown_table",
    "read_load_point",
    "read_manifest",
]

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
REPORT_HTML = "report.html"
DEFAULT_ACCURACY_FLOOR = 0.85

# Rows sort by family in the order the manifest declares (plain encoders first), then by
# precision (fp32 before int8); unknown values go last, alphabetically.
FAMILY_ORDER = typing.get_args(Family)
PRECISION_ORDER = typing.get_args(Precision)


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
                load["texts_per_s_at_slo"],
                price_table,
                machine=load["machine"] or "this machine",
                cpu_s_per_text=None if point is None else point.cpu_s_per_text,
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
    context = ReportContext(
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


def _markdown_document(table: str, ctx: ReportContext) -> str:
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
    cited, left_out = cited_price_references(ctx.prices.references)
    for ref in cited:
        parts.append(
            f"| (reference) {ref.get('what', '')} | | {ref.get('usd_per_million', NA)} | "
            f"published | {ref['citation']} |"
        )
    if left_out:
        parts += [
            "",
            f"{left_out} published figure(s) in the price table name no publication "
            "(title and url) and are not shown.",
        ]
    parts += ["", "## Method", ""] + [f"- {n}" for n in method_notes(ctx)]
    parts += ["", "## Sources", "", *source_lines(ctx.rows)]
    return "\n".join(parts) + "\n"
