"""The answer page's tables as (headers, rows of cell text), shared by Markdown and HTML."""

from __future__ import annotations

from collections.abc import Sequence

from reports.answer import Collected, Entry, Refused
from reports.answer_logic import Cell, QuantRow, cost_at, family_label
from reports.references import label as metric_label
from reports.rows import NA

Table = tuple[list[str], list[list[str]]]


def pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.2f}"


def num(value: float | int | None, spec: str) -> str:
    return NA if value is None else format(value, spec)


def models_table(entries: Sequence[Entry], collected: Collected) -> Table:
    """One row per model: score, published reference, p50/p95 and, per target, the
    throughput and cost there."""
    metric = entries[0].metric if entries else "accuracy"
    ref = collected.references.get(entries[0].dataset) if entries else None
    primary = collected.primary_target
    headers = [
        "Model",
        "Family",
        "Precision",
        f"{metric_label(metric).capitalize()} (%)",
        "Published (%)",
        f"p50 / p95 at {primary:g} ms target (ms)",
    ]
    for t in collected.targets:
        headers += [f"texts/s at p95 <= {t:g} ms", f"$ per million at {t:g} ms"]
    rows = []
    for e in entries:
        point = e.at(primary)
        latency = (
            NA
            if point is None
            else f"{num(point.p50_ms, '.0f')} / {num(point.p95_ms, '.0f')}"
            + ("" if point.meets else " (missed)")
        )
        row = [
            e.name,
            family_label(e.family),
            e.precision,
            pct(e.score),
            pct(ref.value) if ref else NA,
            latency,
        ]
        for t in collected.targets:
            p = e.at(t)
            row += [
                num(p.texts_per_s, ".1f") if p and p.meets else "missed" if p else NA,
                num(cost_at(e, t), ".4f"),
            ]
        rows.append(row)
    return headers, rows


def matrix_table(cells: Sequence[Cell], datasets: Sequence[str], target_ms: float) -> Table:
    """Dataset rows x family columns: best score, its cost, the cheapest within 1 point."""
    families = list(dict.fromkeys(c.family for c in cells))
    headers = ["Dataset", *(family_label(f) for f in families)]
    rows = []
    for dataset in datasets:
        row = [dataset]
        for family in families:
            cell = next((c for c in cells if c.dataset == dataset and c.family == family), None)
            row.append(_cell_text(cell))
        rows.append(row)
    return headers, rows


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "not measured"
    text = f"best {cell.best.name} {pct(cell.best.score)}%, " + (
        f"${cell.best_cost:.4f}/M" if cell.best_cost is not None else "no cost (missed target)"
    )
    close = cell.cheapest_close
    if close is not None and close is not cell.best:
        text += f"; within 1 point: {close.name} {pct(close.score)}%, ${cell.cheapest_cost:.4f}/M"
    return text


def quant_table(rows: Sequence[QuantRow], metric: str) -> Table:
    headers = [
        "Variant",
        "vs",
        f"{metric_label(metric)} change (points)",
        "Label agreement vs fp32 (%)",
        "Speed at lightest load (x fp32)",
        "Throughput at target (x fp32)",
        "Cost (x fp32)",
        "Size (x fp32)",
    ]
    return headers, [
        [
            q.model,
            q.reference,
            num(q.points, "+.2f"),
            pct(q.label_agreement),
            num(q.speed, ".2f"),
            num(q.throughput_ratio, ".2f"),
            num(q.cost_ratio, ".2f"),
            num(q.size_ratio, ".2f"),
        ]
        for q in rows
    ]


def per_class_table(entries: Sequence[Entry]) -> Table | None:
    """Label rows x model columns of F1 (%): wide datasets scroll down, not sideways."""
    scored = [e for e in entries if e.classes is not None]
    if not scored:
        return None
    labels = list(dict.fromkeys(name for e in scored for name in e.classes.labels))  # type: ignore[union-attr]
    headers = ["Label", "Support", *(e.name for e in scored)]
    rows = []
    for name in labels:
        support = next(
            (e.classes.support.get(name) for e in scored if e.classes.support.get(name)),
            None,  # type: ignore[union-attr]
        )
        rows.append([name, num(support, "d"), *(pct(e.classes.f1.get(name)) for e in scored)])  # type: ignore[union-attr]
    return headers, rows


def confusion_table(entry: Entry) -> Table | None:
    if entry.classes is None or entry.classes.confusion is None:
        return None
    labels = entry.classes.labels
    headers = ["true \\ predicted", *labels]
    return headers, [[labels[i], *map(str, row)] for i, row in enumerate(entry.classes.confusion)]


def markdown(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def refused_lines(refused: Sequence[Refused]) -> list[str]:
    """One line per export the gate refused, with why and where it says so."""
    return [
        f"{r.name} ({r.precision}) was refused by the accuracy gate, so it is not served or "
        f"priced: {'; '.join(r.reasons) or 'no reason recorded'} (`{r.source}`)"
        for r in refused
    ]
