"""What the answer page shows, computed once for every rendering (Markdown, HTML, CSV,
JSON): the collected entries, the summary matrix, the answers, the quantization rows, and the
method and source lines that say where each figure came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from reports.answer import Collected, Entry, InputGroup, collect
from reports.answer_logic import Answer, Cell, QuantRow, answer, matrix, quantization
from reports.answer_multitask import MultitaskSection, read_multitask
from reports.cost import DEFAULT_PRICES, PriceTable, load_prices

# Above this many labels a confusion matrix is not printed whole (BANKING77 has 77): the page
# lists the largest confusions instead, and answer.json keeps the whole matrix.
MAX_MATRIX_LABELS = 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerPage:
    """What the page shows, computed once for every rendering."""

    collected: Collected
    cells: list[Cell]
    answers: dict[str, Answer]
    quant: dict[str, list[QuantRow]]
    multitask: MultitaskSection | None = None  # "One model for many tasks", when asked for

    @property
    def datasets(self) -> dict[str, list[Entry]]:
        return self.collected.datasets


def answer_page(
    groups: Sequence[InputGroup],
    *,
    prices: PriceTable | Path | None = None,
    latency_targets: Sequence[float] | None = None,
    multitask: Path | None = None,
) -> AnswerPage:
    """`multitask`: a `multitask_measure.json` (bench/multitask_serving.py measure) for the
    section "One model for many tasks"; read first, so a bad file stops the page early."""
    section = None if multitask is None else read_multitask(multitask)
    table = prices if isinstance(prices, PriceTable) else load_prices(prices or DEFAULT_PRICES)
    collected = collect(groups, table, latency_targets)
    # Asked-for order: the first target named is the one the summary and answers judge by.
    order = list(latency_targets) if latency_targets else collected.targets
    primary = collected.primary_target
    return AnswerPage(
        collected=collected,
        cells=matrix(collected.datasets, primary),
        answers={d: answer(d, es, order) for d, es in collected.datasets.items()},
        quant={d: quantization(es, primary) for d, es in collected.datasets.items()},
        multitask=section,
    )


def method_notes(page: AnswerPage) -> list[str]:
    c = page.collected
    machines = sorted({e.machine for es in c.datasets.values() for e in es if e.machine})
    m = c.prices.measured
    return [
        "Scores: each model directory's `manifest.json` (the exported file scored through the "
        "serving code on the test split); each dataset is judged by the metric its published "
        "reference uses (macro-F1 for multi-label data).",
        "Published figures: from the cited publications, as approximate figures; a caveat says "
        "where the setting differs (training-set size, test split).",
        "Latency targets: " + ", ".join(f"p95 <= {t:g} ms" for t in c.targets) + f"; the summary "
        f"and the answers use p95 <= {c.primary_target:g} ms. At each target a model's "
        "throughput is that of the sweep step with the most throughput whose p95 met it (at "
        "most 1% failed requests). A sweep stops once a step misses its own SLO, so a looser "
        "target than the sweep's can show no more throughput than its last step.",
        "Measured on: " + ("; ".join(machines) if machines else "not recorded") + ".",
        f"$ per million classifications = $/hour / (texts/s x 3600) x 10^6, priced as {m.name} "
        f"(${m.usd_per_hour}/h, {m.vcpus} vCPUs; {m.source}).",
        "Within 1 point: the cheapest model at the target whose score is at most 1 point "
        "(0.01) below the best score. Quantization speed: fp32's p95 at the lightest load over "
        "the variant's.",
    ]


def source_lines(page: AnswerPage) -> list[str]:
    lines = []
    for dataset, entries in page.datasets.items():
        ref = page.collected.references.get(dataset)
        lines.append(f"- {dataset}, published: " + (ref.citation() if ref else "none recorded"))
        for e in entries:
            lines.append(f"- {dataset} / {e.name}: " + "; ".join(e.sources))
    if page.multitask is not None:
        lines.append(f"- one model for many tasks: `{page.multitask.source}` and the manifests "
                     "it names (listed in that section)")  # fmt: skip
    return lines
