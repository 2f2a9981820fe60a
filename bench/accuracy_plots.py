"""The accuracy benchmark's plots: each dataset's figure against what it cost.

Two plots per dataset, side by side in one self-contained `accuracy.html`:
- against estimated training FLOPs: what the figure cost to reach (zero- and few-shot cells
  cost nothing to train and cannot sit on a log axis: the subtitle names them);
- against parameters: what every classification costs to serve, roughly.

The extracted-encoder K sweep (`smollm2-bidir-l{K}`, with and without `-mntp`) is joined by a
line in order of K, so the reader sees what each extra decoder layer buys. A dotted line marks
the published reference. Colours are the HTML report's: one per model family.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

SWEEP = re.compile(r"^smollm2-bidir-l(\d+)(-mntp)?$")


def family_kind(family: str) -> str:
    """The model family a benchmark cell belongs to: encoder, extracted_encoder or causal_lm."""
    if family.startswith("minilm"):
        return "encoder"
    if SWEEP.match(family):
        return "extracted_encoder"
    return "causal_lm"


def sweep_lines(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The K sweep's cells in order of K: one line without MNTP and one with."""
    lines: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in rows:
        match = SWEEP.match(row["family"])
        if match:
            name = "K sweep + MNTP" if match.group(2) else "K sweep"
            lines.setdefault(name, []).append((int(match.group(1)), row))
    return {
        name: [r for _, r in sorted(cells, key=lambda c: c[0])] for name, cells in lines.items()
    }


def _value(row: dict[str, Any]) -> float:
    """The headline in the table's units: percent, or macro-F1 as it is."""
    return row["ours"] * 100 if row["metric"] != "macro_f1" else row["ours"]


def dataset_figure(dataset: str, rows: list[dict[str, Any]], x: str):
    """One plot: every cell of `dataset` with its headline against `x` (estimated_flops or
    parameters), both axes as in the table."""
    import plotly.graph_objects as go

    # The HTML report's colours (imported here: reports.html needs plotly), so a family looks
    # the same in every page we write.
    from reports.html import FAMILY_COLOURS

    cells = [r for r in rows if r["dataset"] == dataset and "error" not in r]
    shown = [r for r in cells if r.get(x, 0) > 0]
    left_out = [r["family"] for r in cells if r.get(x, 0) <= 0]
    metric = cells[0]["metric"] if cells else "accuracy"
    fig = go.Figure()
    for kind, colour in FAMILY_COLOURS.items():
        members = [r for r in shown if family_kind(r["family"]) == kind]
        if not members:
            continue
        fig.add_trace(
            go.Scatter(
                x=[r[x] for r in members],
                y=[_value(r) for r in members],
                mode="markers+text",
                text=[r["family"] for r in members],
                textposition="top center",
                textfont={"size": 10},
                marker={"size": 11, "color": colour, "line": {"width": 1, "color": "#333"}},
                name=kind.replace("_", " "),
                hovertext=[
                    f"{r['family']}: {_value(r):.2f} ({r['train_rows']:,} train rows, "
                    f"{r['epochs']} epochs, {r['train_seconds']:.0f} s)"
                    for r in members
                ],
                hoverinfo="text",
            )
        )
    for name, line in sweep_lines(shown).items():
        fig.add_trace(
            go.Scatter(
                x=[r[x] for r in line],
                y=[_value(r) for r in line],
                mode="lines",
                line={
                    "dash": "dash" if "MNTP" in name else "solid",
                    "color": FAMILY_COLOURS["extracted_encoder"],
                },
                name=name,
                hoverinfo="skip",
            )
        )
    reference = cells[0].get("reference") if cells else None
    if reference is not None:
        ref = reference * 100 if metric != "macro_f1" else reference
        fig.add_hline(
            y=ref,
            line={"dash": "dot", "color": "#c33"},
            annotation_text=f"published {ref:.4g}",
            annotation_position="bottom right",
        )
    what = "estimated training FLOPs" if x == "estimated_flops" else "parameters"
    title = f"{dataset}: {metric.replace('_', ' ')} vs {what}"
    if left_out:
        title += f"<br><sup>not shown (no {what}): {', '.join(left_out)}</sup>"
    xs = [r[x] for r in shown]
    if xs:
        # Half a decade of margin, so the labels of the outermost points stay inside.
        fig.update_xaxes(range=[math.log10(min(xs)) - 0.5, math.log10(max(xs)) + 0.5])
    unit = " (%)" if metric != "macro_f1" else ""
    fig.update_layout(
        title=title,
        xaxis_title=f"{what} (log scale)",
        yaxis_title=f"{metric.replace('_', ' ')} on the test split{unit}",
        xaxis_type="log",
        template="plotly_white",
        width=620,
        height=520,
        legend={"orientation": "h", "y": -0.2, "x": 0},
        margin={"l": 60, "r": 20, "t": 80, "b": 120},
    )
    return fig


def write_plots(rows: list[dict[str, Any]], out: Path, command: str) -> Path | None:
    """`accuracy.html` beside the table, or None (with the reason logged by the caller) when
    plotly, the `report` extra, is not installed."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return None
    import html

    datasets = list(dict.fromkeys(r["dataset"] for r in rows if "error" not in r))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>smallcls: accuracy against cost</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1280px}"
        ".plots{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>",
        "<h1>Accuracy against cost</h1>",
        f"<p><code>{html.escape(command)}</code>; the figures are those of accuracy.md.</p>",
    ]
    first = True
    for dataset in datasets:
        parts.append("<div class='plots'>")
        for x in ("estimated_flops", "parameters"):
            fig = dataset_figure(dataset, rows, x)
            parts.append(
                fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False})
            )
            first = False
        parts.append("</div>")
    parts.append("</body></html>")
    path = out / "accuracy.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
