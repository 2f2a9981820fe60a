"""The report as one self-contained HTML page: tables and interactive Pareto plots.

plotly.js is embedded inline once (about 4.7 MB), so the page opens from disk with no
network. Colour is the model family, marker shape the precision; the dashed line joins the
Pareto frontier; hovering a point shows its numbers and the files they came from.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go

from reports.references import cited_price_references
from reports.rows import (
    FAMILY_LABELS,
    NA,
    ReportContext,
    ReportRow,
    method_notes,
    row_key,
    source_lines,
    table_cells,
)

# Colour-blind-safe (Okabe-Ito) colours per family; marker symbols per precision.
FAMILY_COLOURS = {"encoder": "#0072B2", "extracted_encoder": "#E69F00", "causal_lm": "#009E73"}
PRECISION_SYMBOLS = {"fp32": "circle", "fp16": "square", "int8": "diamond"}
OTHER_COLOUR, OTHER_SYMBOL = "#777777", "x"
# Summary columns shown in the second HTML table (report.md keeps one table).
FACT_COLUMNS = frozenset(
    {
        "Throughput (req/s)",
        "Server CPU (%)",
        "Size (MB)",
        "Params (M)",
        "GFLOPs per example (est.)",
        "Label agreement vs fp32 (%)",
        "Train time (s)",
    }
)

CSS = """
body { font-family: system-ui, sans-serif; color: #222; }
body { margin: 2em auto; padding: 0 1em; max-width: 1280px; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; }
.rec { background: #eef6ee; border-left: 5px solid #2a7; padding: 0.7em 1em; }
.rec.none { background: #fbeeee; border-left-color: #c33; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plot { flex: 0 0 620px; }
.table { max-width: 100%; overflow-x: auto; }
code { font-size: 12px; } li { margin: 0.2em 0; }
"""


def render_html(ctx: ReportContext) -> str:
    # Both axes span an order of magnitude or more across model sizes: log scales.
    plots = [
        _pareto_figure(ctx, "usd_per_million", "$ per million classifications (log scale)",
                       log=True, include_js=True),
        _pareto_figure(ctx, "p95_ms", "p95 latency at the operating point (ms, log scale)",
                       log=True, include_js=False),
    ]  # fmt: skip
    rec = ctx.recommendation
    headers, cells = table_cells(ctx.rows, ctx.prices.measured_as)
    # Twenty columns do not fit a laptop's width: what an analyst compares first, then the
    # model facts and load figures beside the same names.
    first = [i for i, h in enumerate(headers) if h not in FACT_COLUMNS]
    facts = [0, *(i for i, h in enumerate(headers) if h in FACT_COLUMNS)]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>smallcls: model comparison</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Model comparison</h1>",
        f"<p class='meta'>Accuracy floor {ctx.accuracy_floor:.1%} ({html.escape(ctx.metric)}), "
        f"latency target p95 &le; {ctx.latency_target_ms:g} ms; "
        f"measured on {html.escape(_machines(ctx.rows))}.</p>",
        f"<div class='rec{'' if rec.choice else ' none'}'><b>Recommendation.</b> "
        f"{html.escape(rec.message)}</div>",
        "<h2>Pareto frontiers</h2>",
        f"<div class='plots'><div class='plot'>{plots[0]}</div>"
        f"<div class='plot'>{plots[1]}</div></div>",
        "<h2>Summary</h2>",
        _table([headers[i] for i in first], [[row[i] for i in first] for row in cells]),
        "<h2>Models and load</h2>",
        _table([headers[i] for i in facts], [[row[i] for i in facts] for row in cells]),
        "<h2>Accuracy cost of quantization</h2>",
        _quant_table(ctx),
        "<h2>Cost per instance type</h2>",
        _cost_table(ctx),
        "<h2>Method</h2><ul>",
        *(f"<li>{_md_code(n)}</li>" for n in method_notes(ctx)),
        "</ul><h2>Sources</h2><ul>",
        *(f"<li>{_md_code(line.removeprefix('- '))}</li>" for line in source_lines(ctx.rows)),
        "</ul></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _pareto_figure(ctx: ReportContext, x: str, x_title: str, *, log: bool = False,
                   include_js: bool) -> str:  # fmt: skip
    metric_label = "Accuracy" if ctx.metric == "accuracy" else "Macro-F1"
    fig = go.Figure()
    rows = [(i, r) for i, r in enumerate(ctx.rows) if _point(r, x, ctx.metric) is not None]
    groups: dict[tuple[str, str], list[ReportRow]] = {}
    for _, row in rows:
        groups.setdefault((row.family, row.precision), []).append(row)
    for (family, precision), members in sorted(groups.items()):
        fig.add_trace(
            go.Scatter(
                x=[getattr(r, x) for r in members],
                y=[100 * getattr(r, ctx.metric) for r in members],
                mode="markers+text",
                text=[r.name for r in members],
                textposition="top center",
                textfont={"size": 10},
                name=f"{FAMILY_LABELS.get(family, family)}, {precision}",
                marker={
                    "size": 13,
                    "color": FAMILY_COLOURS.get(family, OTHER_COLOUR),
                    "symbol": PRECISION_SYMBOLS.get(precision, OTHER_SYMBOL),
                    "line": {"width": 1, "color": "#333"},
                },
                hovertext=[_hover(r) for r in members],
                hoverinfo="text",
            )
        )
    front = [ctx.rows[i] for i in ctx.frontier(x)]
    if front:
        fig.add_trace(
            go.Scatter(
                x=[getattr(r, x) for r in front],
                y=[100 * getattr(r, ctx.metric) for r in front],
                mode="lines",
                line={"dash": "dash", "color": "#444", "shape": "hv"},
                name="Pareto frontier",
                hoverinfo="skip",
            )
        )
    fig.add_hline(
        y=100 * ctx.accuracy_floor, line={"dash": "dot", "color": "#c33"},
        annotation_text=f"floor {ctx.accuracy_floor:.1%}", annotation_position="bottom right",
    )  # fmt: skip
    if x == "p95_ms":
        # A trace, not a shape: shapes on log axes take log10 coordinates and are easy to misplace.
        ys = [100 * getattr(r, ctx.metric) for _, r in rows] + [100 * ctx.accuracy_floor]
        fig.add_trace(
            go.Scatter(
                x=[ctx.latency_target_ms] * 2, y=[min(ys) - 2, max(ys) + 2], mode="lines",
                line={"dash": "dot", "color": "#c33"}, hoverinfo="skip",
                name=f"target p95 {ctx.latency_target_ms:g} ms",
            )
        )  # fmt: skip
    missing = [r.name for r in ctx.rows if _point(r, x, ctx.metric) is None]
    if x == "usd_per_million":
        title = f"{metric_label} vs cost on {ctx.prices.measured_as}"
    else:
        title = f"{metric_label} vs p95 latency"
    if missing:
        why = "no throughput at the target" if x == "usd_per_million" else "no load test"
        title += f"<br><sup>{len(missing)} not shown ({why}); see the tables</sup>"
    xs = [getattr(r, x) for _, r in rows]
    if x == "p95_ms":
        xs.append(ctx.latency_target_ms)
    if log and xs:
        # Half a decade of margin: labels above the outermost markers stay inside the plot.
        fig.update_xaxes(range=[math.log10(min(xs)) - 0.5, math.log10(max(xs)) + 0.5])
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=f"{metric_label} on the test split (%)",
        xaxis_type="log" if log else "linear",
        template="plotly_white",
        # Fixed size: two plots side by side on a 1,280 px page, never overlapping.
        width=620,
        height=560,
        # Below the plot: two plots side by side leave no room for a legend at the right.
        legend={"orientation": "h", "y": -0.22, "x": 0, "title": {"text": "family, precision: "}},
        showlegend=True,
        margin={"l": 60, "r": 20, "t": 80, "b": 130},
    )
    return fig.to_html(
        full_html=False, include_plotlyjs=bool(include_js), config={"displaylogo": False}
    )


def _point(row: ReportRow, x: str, metric: str) -> tuple[float, float] | None:
    xv, yv = getattr(row, x), getattr(row, metric)
    if xv is None or yv is None or (x == "usd_per_million" and not row.meets_slo):
        return None
    return xv, yv


def _hover(row: ReportRow) -> str:
    def f(value: Any, spec: str, unit: str = "") -> str:
        return NA if value is None else f"{format(value, spec)}{unit}"

    lines = [
        f"<b>{row.name}</b> ({FAMILY_LABELS.get(row.family, row.family)}, {row.precision})",
        f"accuracy {f(None if row.accuracy is None else 100 * row.accuracy, '.2f', '%')}, "
        f"macro-F1 {f(None if row.macro_f1 is None else 100 * row.macro_f1, '.2f', '%')}",
        f"p50 / p95 {f(row.p50_ms, '.0f')} / {f(row.p95_ms, '.0f')} ms at {row.users} users",
        f"throughput at SLO {f(row.texts_per_s_at_slo, '.1f', ' texts/s')}",
        f"$ {f(row.usd_per_million, '.4f')} per million ({row.cost_instance})",
        f"size {row.model_mb:.1f} MB, params {f(row.parameters_m, '.1f', ' M')}",
        f"source: {row.step_dir or row.loadtest_dir or 'no load test'}",
    ]
    return "<br>".join(html.escape(line).replace("&lt;b&gt;", "<b>").replace("&lt;/b&gt;", "</b>")
                       .replace("&lt;br&gt;", "<br>") for line in lines)  # fmt: skip


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    # In a scrolling box: a table wider than the window scrolls instead of being cut off.
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='table'>{table}</div>"


def _fmt(value: float | None, spec: str) -> str:
    return NA if value is None else format(value, spec)


def _quant_table(ctx: ReportContext) -> str:
    quant = ctx.quantization()
    if not quant:
        return "<p>No fp32/quantized pairs among the models.</p>"
    headers = [
        "Variant", "vs", f"{ctx.metric} change (points)", "Label agreement vs fp32 (%)",
        "Throughput at SLO (x fp32)", "Cost (x fp32)", "Size (x fp32)",
    ]  # fmt: skip
    rows = [
        [
            q["model"],
            q["reference"],
            _fmt(q["delta_points"], "+.2f"),
            _fmt(
                None
                if q["label_agreement_vs_fp32"] is None
                else 100 * q["label_agreement_vs_fp32"],
                ".2f",
            ),
            _fmt(q["throughput_ratio"], ".2f"),
            _fmt(q["cost_ratio"], ".2f"),
            _fmt(q["size_ratio"], ".2f"),
        ]
        for q in quant
    ]
    return _table(headers, rows)


def _cost_table(ctx: ReportContext) -> str:
    headers = ["Model", "Instance", "$ per million", "Basis", "How"]
    rows = [
        [r.name, c.instance, _fmt(c.usd_per_million, ".4f"), c.basis, c.note]
        for r in ctx.rows
        for c in ctx.costs[row_key(r)]
    ]
    cited, left_out = cited_price_references(ctx.prices.references)
    for ref in cited:
        rows.append([f"(reference) {ref.get('what', '')}", "", str(ref.get("usd_per_million", NA)),
                     "published", ref["citation"]])  # fmt: skip
    prices = _table(
        ["Instance", "vCPUs", "GPU", "$ / hour", "Price source"],
        [[i.name, str(i.vcpus), i.gpu or "-", f"{i.usd_per_hour:g}", i.source]
         for i in ctx.prices.instances],
    )  # fmt: skip
    note = (
        f"<p>{left_out} published figure(s) in the price table name no publication (title and "
        "url) and are not shown.</p>"
        if left_out
        else ""
    )
    return (
        _table(headers, rows)
        + note
        + f"<p>Price table: <code>{html.escape(ctx.prices.path)}</code>"
        f" (measured as {html.escape(ctx.prices.measured_as)})</p>" + prices
    )


def _machines(rows: list[ReportRow]) -> str:
    machines = sorted({r.machine for r in rows if r.machine})
    return "; ".join(machines) if machines else "not recorded"


def _md_code(text: str) -> str:
    """Markdown `code` spans to <code>, everything else escaped."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
