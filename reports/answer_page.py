"""One answer page across datasets: `answer.md`, `answer.csv`, `answer.json` and `answer.html`.

For each dataset: every family and precision with its headline metric beside the published
reference, p50/p95, throughput and cost at each latency target, latency-throughput curves,
per-class F1, confusion matrices and the cost of quantization; above them a summary matrix
(dataset x family) and one plain-words answer per dataset. With a multi-task measurement
(`multitask_measure.json`), the section "One model for many tasks" (reports/answer_multitask.py).
Every figure names the file it came
from (the Sources section), and every published figure its publication's title and link.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.answer import InputGroup
from reports.answer_multitask import markdown_lines
from reports.answer_multitask import to_json as multitask_json
from reports.answer_summary import (
    MAX_MATRIX_LABELS,
    AnswerPage,
    answer_page,
    method_notes,
    source_lines,
)
from reports.answer_tables import (
    confusion_table,
    markdown,
    matrix_table,
    models_table,
    per_class_table,
    quant_table,
    refused_lines,
)
from reports.cost import PriceTable

ANSWER_MD = "answer.md"
ANSWER_CSV = "answer.csv"
ANSWER_JSON = "answer.json"
ANSWER_HTML = "answer.html"
CSV_COLUMNS = [
    "dataset",
    "model",
    "family",
    "precision",
    "metric",
    "score",
    "accuracy",
    "macro_f1",
    "published",
    "published_source",
    "target_p95_ms",
    "meets_target",
    "users",
    "p50_ms",
    "p95_ms",
    "texts_per_s",
    "usd_per_million",
    "cost_instance",
    "model_dir",
    "step_summary",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerResult:
    page: AnswerPage
    markdown_path: Path
    csv_path: Path
    json_path: Path
    html_path: Path | None


def build_answer_page(
    groups: Sequence[InputGroup],
    out_dir: Path,
    *,
    prices: PriceTable | Path | None = None,
    latency_targets: Sequence[float] | None = None,
    html: bool = True,
    multitask: Path | None = None,
) -> AnswerResult:
    """Every file is computed before any is written: a bad input leaves no half page."""
    page = answer_page(groups, prices=prices, latency_targets=latency_targets, multitask=multitask)
    md_text = render_markdown(page)
    json_text = json.dumps(to_json(page), indent=1) + "\n"
    html_text = None
    if html:
        from reports.answer_html import render_answer_html  # plotly only when a page is made

        html_text = render_answer_html(page)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / ANSWER_MD
    md_path.write_text(md_text, encoding="utf-8")
    csv_path = out_dir / ANSWER_CSV
    write_csv(csv_path, page)
    json_path = out_dir / ANSWER_JSON
    json_path.write_text(json_text, encoding="utf-8")
    html_path = None
    if html_text is not None:
        html_path = out_dir / ANSWER_HTML
        html_path.write_text(html_text, encoding="utf-8")
    return AnswerResult(
        page=page,
        markdown_path=md_path,
        csv_path=csv_path,
        json_path=json_path,
        html_path=html_path,
    )


def render_markdown(page: AnswerPage) -> str:
    c = page.collected
    names = list(page.datasets)
    parts = ["# Which model, for which data", ""]
    parts += ["## Answers", "", *(f"- {page.answers[d].text}" for d in names), ""]
    parts += [f"## Summary (p95 <= {c.primary_target:g} ms, {c.prices.measured_as})", ""]
    parts += [markdown(matrix_table(page.cells, names, c.primary_target)), ""]
    for dataset, entries in page.datasets.items():
        ref = c.references.get(dataset)
        parts += [f"## {dataset}", "", page.answers[dataset].text, ""]
        parts += [f"Published: {ref.citation()}" if ref else "Published: none recorded.", ""]
        parts += [markdown(models_table(entries, c)), ""]
        if page.quant[dataset]:
            parts += [
                "### Quantization",
                "",
                markdown(quant_table(page.quant[dataset], entries[0].metric)),
                "",
            ]
        refused = refused_lines(page.collected.refused.get(dataset, []))
        if refused:
            parts += ["### Refused by the accuracy gate", "", *(f"- {r}" for r in refused), ""]
        per_class = per_class_table(entries)
        if per_class is not None:
            parts += ["### Per-class F1 (%)", "", markdown(per_class), ""]
        for e in entries:
            confusion = confusion_table(e)
            if confusion is None:
                continue
            if len(e.classes.labels) <= MAX_MATRIX_LABELS:  # type: ignore[union-attr]
                parts += [f"### Confusion matrix: {e.name}", "", markdown(confusion), ""]
            else:
                top = ", ".join(f"{t} as {p} ({n})" for t, p, n in e.classes.top_confusions())  # type: ignore[union-attr]
                parts += [f"Largest confusions of {e.name}: {top or 'none'}.", ""]
    if page.multitask is not None:
        parts += markdown_lines(page.multitask, c.prices.measured_as)
    parts += ["## Method", "", *(f"- {n}" for n in method_notes(page)), ""]
    parts += ["## Sources", "", *source_lines(page)]
    return "\n".join(parts) + "\n"


def csv_rows(page: AnswerPage) -> list[dict[str, Any]]:
    """One row per dataset, model and latency target, as raw numbers."""
    out = []
    c = page.collected
    for dataset, entries in page.datasets.items():
        ref = c.references.get(dataset)
        for e in entries:
            for point in e.targets or [None]:
                out.append(
                    {
                        "dataset": dataset,
                        "model": e.name,
                        "family": e.family,
                        "precision": e.precision,
                        "metric": e.metric,
                        "score": e.score,
                        "accuracy": e.accuracy,
                        "macro_f1": e.macro_f1,
                        "published": ref.value if ref else None,
                        "published_source": f"{ref.title} ({ref.url})" if ref else None,
                        "target_p95_ms": point and point.target_ms,
                        "meets_target": point and point.meets,
                        "users": point and point.users,
                        "p50_ms": point and point.p50_ms,
                        "p95_ms": point and point.p95_ms,
                        "texts_per_s": point and point.texts_per_s,
                        "usd_per_million": point and point.usd_per_million,
                        "cost_instance": c.prices.measured_as,
                        "model_dir": e.model_dir,
                        "step_summary": point and point.step_summary,
                    }
                )
    return out


def write_csv(path: Path, page: AnswerPage) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in csv_rows(page):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def to_json(page: AnswerPage) -> dict[str, Any]:
    c = page.collected
    extra = {} if page.multitask is None else {"multitask": multitask_json(page.multitask)}
    return {
        "targets_ms": c.targets,
        "primary_target_ms": c.primary_target,
        "cost_instance": c.prices.measured_as,
        "price_table": c.prices.path,
        "datasets": {
            d: {
                "reference": None
                if c.references.get(d) is None
                else dataclasses.asdict(c.references[d]),  # type: ignore[arg-type]
                "answer": page.answers[d].text,
                "winner": page.answers[d].winner and page.answers[d].winner.name,
                "points_vs_rival": page.answers[d].points_vs_rival,
                "cost_multiple": page.answers[d].cost_multiple,
                "models": [dataclasses.asdict(e) for e in es],
                "quantization": [dataclasses.asdict(q) for q in page.quant[d]],
            }
            for d, es in c.datasets.items()
        },
        "summary": [
            {
                "dataset": x.dataset,
                "family": x.family,
                "best": x.best.name,
                "best_score": x.best.score,
                "best_usd_per_million": x.best_cost,
                "cheapest_within_1_point": x.cheapest_close and x.cheapest_close.name,
                "cheapest_usd_per_million": x.cheapest_cost,
            }
            for x in page.cells
        ],
        **extra,
    }


def wants_answer_page(
    model_dirs: Sequence[Path], from_dirs: Sequence[Path], latency_targets: Sequence[float] | None
) -> bool:
    """The answer page is written for pipeline output dirs, for named latency targets, and
    for models of more than one dataset; one dataset's models alone get the classic report."""
    if from_dirs or latency_targets:
        return True
    from reports.inputs import read_manifest

    names = {read_manifest(Path(d)).dataset.get("name") or "test" for d in model_dirs}
    return len(names) > 1
