"""The answer page as one self-contained HTML file: answers, the summary matrix, and per
dataset the models' table, latency-throughput curves, quantization, per-class F1 and the
confusion matrices, and (when measured) one multi-task model against one encoder per task;
plotly.js is embedded once, so the page opens from disk with no network.

Colour is the model family, line dash the precision (as in the single-dataset report's plots).
Plots have a fixed width that fits a 1024 px window; tables scroll inside their box rather
than widen the page; confusion matrices are folded (<details>) so the page stays readable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from reports.answer import Entry
from reports.answer_logic import family_label
from reports.answer_multitask import (
    TITLE,
    MultitaskSection,
    accuracy_table,
    method_lines,
    stream_table,
)
from reports.answer_summary import MAX_MATRIX_LABELS, AnswerPage, method_notes, source_lines
from reports.answer_tables import (
    Table,
    confusion_table,
    matrix_table,
    models_table,
    per_class_table,
    quant_table,
    refused_lines,
)
from reports.html import CSS, FAMILY_COLOURS, OTHER_COLOUR, _md_code
from reports.references import Reference

DASHES = {"fp32": "solid", "fp16": "dash", "int8": "dot"}
PLOT_WIDTH, PLOT_HEIGHT = 620, 470
LOG_TICKS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
EXTRA_CSS = """
.answer { background: #eef6ee; border-left: 5px solid #2a7; padding: 0.5em 1em; margin: 0.4em 0; }
.ref { color: #333; } .words td, .words th { text-align: left; }
details { margin: 0.3em 0 0.8em; } summary { cursor: pointer; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
"""


def render_answer_html(page: AnswerPage) -> str:
    c = page.collected
    names = list(page.datasets)
    first_js = [True]  # plotly.js goes into the first figure only

    def figure(fig: go.Figure) -> str:
        include, first_js[0] = first_js[0], False
        return fig.to_html(full_html=False, include_plotlyjs=include, config={"displaylogo": False})

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>smallcls: which model, for which data</title>",
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>",
        "<h1>Which model, for which data</h1>",
        f"<p class='meta'>{len(names)} datasets; latency targets "
        + ", ".join(f"p95 &le; {t:g} ms" for t in c.targets)
        + f"; costs on {html.escape(c.prices.measured_as)}. The summary and the answers use "
        f"p95 &le; {c.primary_target:g} ms.</p>",
        "<h2>Answers</h2>",
        *(f"<div class='answer'>{html.escape(page.answers[d].text)}</div>" for d in names),
        f"<h2>Summary: dataset x family (p95 &le; {c.primary_target:g} ms)</h2>",
        _table(matrix_table(page.cells, names, c.primary_target), "words"),
    ]
    quant = [q for d in names for q in page.quant[d]]
    if any(q.points is not None and q.cost_ratio is not None for q in quant):
        parts += ["<h2>Cost of quantization</h2>", figure(_quant_figure(page))]
    for dataset, entries in page.datasets.items():
        parts += [
            f"<section><h2>{html.escape(dataset)}</h2>",
            f"<div class='answer'>{html.escape(page.answers[dataset].text)}</div>",
            _reference(c.references.get(dataset)),
            _table(models_table(entries, c)),
        ]
        if any(e.curve for e in entries):
            parts += [
                "<h3>Latency against throughput</h3>",
                figure(_curves(dataset, entries, c.targets)),
            ]
        if page.quant[dataset]:
            parts += [
                "<h3>Quantization</h3>",
                _table(quant_table(page.quant[dataset], entries[0].metric)),
            ]
        refused = refused_lines(c.refused.get(dataset, []))
        if refused:
            parts += ["<h3>Refused by the accuracy gate</h3><ul>",
                      *(f"<li>{_md_code(r)}</li>" for r in refused), "</ul>"]  # fmt: skip
        per_class = per_class_table(entries)
        if per_class is not None:
            parts += ["<h3>Per-class F1 (%)</h3>", _table(per_class)]
        parts += [_confusions(entries), "</section>"]
    if page.multitask is not None:
        parts += _multitask(page.multitask, c.prices.measured_as)
    parts += [
        "<h2>Method</h2><ul>",
        *(f"<li>{_md_code(n)}</li>" for n in method_notes(page)),
        "</ul><h2>Sources</h2><ul>",
        *(f"<li>{_md_code(line.removeprefix('- '))}</li>" for line in source_lines(page)),
        "</ul></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _multitask(section: MultitaskSection, page_instance: str) -> list[str]:
    return [
        f"<section><h2>{html.escape(TITLE)}</h2>",
        f"<div class='answer'>{html.escape(section.text)}</div>",
        "<h3>Accuracy per task</h3>",
        _table(accuracy_table(section)),
        "<h3>Mixed stream of all tasks</h3>",
        _table(stream_table(section)),
        "<ul>",
        *(f"<li>{_md_code(line)}</li>" for line in method_lines(section, page_instance)),
        "</ul></section>",
    ]


def _reference(ref: Reference | None) -> str:
    if ref is None:
        return "<p class='ref'>Published: none recorded for this dataset.</p>"
    caveat = f"; {html.escape(ref.caveat)}" if ref.caveat else ""
    return (
        f"<p class='ref'>Published: {html.escape(ref.what)}, {100 * ref.value:.1f}%, in "
        f"<a href='{html.escape(ref.url)}'>{html.escape(ref.title)}</a>{caveat}.</p>"
    )


def _curves(dataset: str, entries: Sequence[Entry], targets: Sequence[float]) -> go.Figure:
    fig = go.Figure()
    for e in entries:
        if not e.curve:
            continue
        points = [p for p in e.curve if p.p95_ms is not None]
        fig.add_trace(
            go.Scatter(
                x=[p.texts_per_s for p in points],
                y=[p.p95_ms for p in points],
                mode="lines+markers",
                name=f"{e.name} ({family_label(e.family)})",
                line={
                    "color": FAMILY_COLOURS.get(e.family, OTHER_COLOUR),
                    "dash": DASHES.get(e.precision, "dashdot"),
                },
                text=[f"{p.users} users" for p in points],
                hovertemplate="%{text}: %{x:.1f} texts/s, p95 %{y:.0f} ms<extra>"
                + e.name
                + "</extra>",
            )
        )
    # Targets as traces, not shapes: shapes on a log axis take log10 coordinates.
    right = max((p.texts_per_s for e in entries for p in e.curve), default=1.0) * 1.05
    for t in targets:
        fig.add_trace(
            go.Scatter(
                x=[0, right], y=[t, t], mode="lines", hoverinfo="skip",
                line={"dash": "dot", "color": "#c33", "width": 1}, name=f"target p95 {t:g} ms",
            )
        )  # fmt: skip
    fig.update_layout(
        title=f"{dataset}: p95 latency by load (one point per sweep step)",
        xaxis_title="throughput (texts/s)",
        yaxis_title="p95 latency (ms, log scale)",
        yaxis_type="log",
        # Whole-number ticks: plotly's log ticks label 200 ms as a bare "2".
        yaxis_tickvals=LOG_TICKS,
        template="plotly_white",
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        legend={"orientation": "h", "y": -0.25, "x": 0},
        margin={"l": 60, "r": 20, "t": 60, "b": 140},
    )
    return fig


def _quant_figure(page: AnswerPage) -> go.Figure:
    fig = go.Figure()
    for dataset, rows in page.quant.items():
        rows = [q for q in rows if q.points is not None and q.cost_ratio is not None]
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[q.cost_ratio for q in rows],
                    y=[q.points for q in rows],
                    mode="markers+text",
                    text=[q.model for q in rows],
                    textposition="top center",
                    textfont={"size": 10},
                    name=dataset,
                    marker={"size": 12},
                )
            )
    fig.add_vline(x=1.0, line={"dash": "dot", "color": "#777"})
    fig.add_hline(y=0.0, line={"dash": "dot", "color": "#777"})
    fig.update_layout(
        title="Quantized against fp32: score change vs cost change",
        xaxis_title="cost at the target (x fp32; < 1 is cheaper)",
        yaxis_title="score change (points)",
        template="plotly_white",
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        legend={"orientation": "h", "y": -0.25, "x": 0, "title": {"text": "dataset: "}},
        margin={"l": 60, "r": 20, "t": 60, "b": 120},
    )
    return fig


def _confusions(entries: Sequence[Entry]) -> str:
    parts = []
    for e in entries:
        table = confusion_table(e)
        if table is None or e.classes is None:
            continue
        top = ", ".join(f"{t} as {p} ({n})" for t, p, n in e.classes.top_confusions())
        parts.append(
            f"<p>{html.escape(e.name)}: largest confusions {html.escape(top or 'none')}"
            f" <small>(<code>{html.escape(e.classes.source)}</code>)</small></p>"
        )
        if len(e.classes.labels) <= MAX_MATRIX_LABELS:
            parts.append(
                f"<details><summary>Confusion matrix of {html.escape(e.name)} (rows: "
                f"true label)</summary>{_table(table)}</details>"
            )
    return ("<h3>Confusion matrices</h3>" + "".join(parts)) if parts else ""


def _table(table: Table, css_class: str = "") -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    table = (
        f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
    return f"<div class='table'>{table}</div>"
