"""The report's rows and the text both renderings (Markdown, HTML) make of them."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_NAME, MODEL_NAME
from loadtests.run import SUMMARY_NAME
from loadtests.sweep import SWEEP_NAME
from reports.cost import Cost, PriceTable
from reports.select import Recommendation, pareto_front

RUN_METRICS = "metrics.json"  # a training run's metrics, named in the sources
NA = "n/a"
FAMILY_LABELS = {
    "encoder": "encoder",
    "extracted_encoder": "extracted encoder",
    "causal_lm": "causal LM",
}


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
    # How the sweep found and priced the throughput (its `method` sentence); "" when unknown.
    load_method: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportContext:
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


def method_notes(ctx: ReportContext) -> list[str]:
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
        *[f"Sweep: {m}" for m in sorted({r.load_method for r in ctx.rows if r.load_method})],
        "A sweep priced from the server's CPU-seconds per classification (the load generator "
        "shared the server's cores) gives $ per million = CPU-seconds per text x the "
        "instance's $ per vCPU-second x 10^6 (docs/cost-method.md): a floor, the instance's "
        "vCPUs busy at that operating point with no headroom.",
        "GFLOPs per example: an estimate, 2 x parameters x mean tokens of the test texts "
        "(template applied, truncated at max length); it counts embedding parameters as if "
        "they were matrix multiplies, so it overstates models with large vocabularies.",
        f"Size: bytes of `{MODEL_NAME}` (plus external data) / 10^6. Server CPU: CPU time of the "
        "server's process tree during the step / wall time (100% = one core).",
    ]


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


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
