"""The answer page's section "One model for many tasks": one multi-task causal model against
one encoder per task, from the record `bench/multitask_serving.py measure` writes
(core/multitask_measure.py).

Two tables (accuracy per task; the mixed stream's throughput, latency, memory and cost) and a
plain-words answer computed from them: on how many tasks each setup is more accurate, and the
cost and memory multiples. Every figure names the file it was read from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.multitask_measure import MultitaskMeasure, MultitaskMeasureError, SetupResult
from reports.answer_tables import Table, markdown, num, pct
from reports.inputs import ReportError

TITLE = "One model for many tasks"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskComparison:
    task: str
    multitask: float  # accuracy, fraction
    encoder: float
    points: float  # multi-task minus encoder, in points (rounded to 0.01)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultitaskSection:
    """The record and what the page computes from it."""

    record: MultitaskMeasure
    source: str  # the record's path
    tasks: list[TaskComparison]
    cost_multiple: float | None  # the multi-task setup's $ per million over the encoders'
    memory_multiple: float  # median server RSS, multi-task over encoders
    throughput_multiple: float  # median texts/s, multi-task over encoders
    text: str  # the plain-words answer

    @property
    def more_accurate(self) -> list[TaskComparison]:
        return [t for t in self.tasks if t.points > 0]

    @property
    def less_accurate(self) -> list[TaskComparison]:
        return [t for t in self.tasks if t.points < 0]


def read_multitask(path: Path | str) -> MultitaskSection:
    """The section from a `multitask_measure.json`; a missing or malformed file raises
    ReportError naming the file and what is wrong."""
    try:
        record = MultitaskMeasure.read(path)
    except MultitaskMeasureError as exc:
        raise ReportError(f"--multitask: {exc}") from None
    return multitask_section(record, str(path))


def multitask_section(record: MultitaskMeasure, source: str) -> MultitaskSection:
    multi, enc = record.multitask, record.per_task_encoders
    tasks = []
    for task in record.tasks:
        a, b = multi.accuracy_of(task).accuracy, enc.accuracy_of(task).accuracy
        # Points to two decimals: a difference below 0.005 points is a tie, not a winner.
        points = round(100 * (a - b), 2)
        tasks.append(TaskComparison(task=task, multitask=a, encoder=b, points=points))
    a_cost, b_cost = multi.usd_per_million, enc.usd_per_million
    cost_multiple = None if a_cost is None or not b_cost else a_cost / b_cost
    memory = multi.median_rss_mb / enc.median_rss_mb if enc.median_rss_mb else float("inf")
    rate = multi.median_texts_per_s / enc.median_texts_per_s if enc.median_texts_per_s else 0.0
    partial = MultitaskSection(
        record=record, source=source, tasks=tasks, cost_multiple=cost_multiple,
        memory_multiple=memory, throughput_multiple=rate, text="",
    )  # fmt: skip
    return dataclasses.replace(partial, text=answer_text(partial))


def _times(multiple: float) -> str:
    # Below 1, two decimals: "0.45 times" says more than "0.5 times".
    return f"{multiple:.1f} times" if multiple >= 1 else f"{multiple:.2f} times"


def _tasks_text(rows: list[TaskComparison]) -> str:
    return ", ".join(f"{t.task} {t.points:+.2f} points" for t in rows)


def answer_text(s: MultitaskSection) -> str:
    """One paragraph from the numbers: accuracy task by task, then cost and memory."""
    r = s.record
    multi, enc = r.multitask, r.per_task_encoders
    more, less = s.more_accurate, s.less_accurate
    ties = len(s.tasks) - len(more) - len(less)
    parts = [
        f"On {len(s.tasks)} tasks ({', '.join(r.tasks)}), one multi-task model "
        f"({', '.join(m.name for m in multi.models)}) is more accurate than one encoder per "
        f"task ({enc.name}) on {len(more)} of {len(s.tasks)}"
        + (f" ({_tasks_text(more)})" if more else "")
        + (f", less accurate on {len(less)} ({_tasks_text(less)})" if less else "")
        + (f", as accurate on {ties}" if ties else "")
        + "."
    ]
    if s.cost_multiple is None:
        parts.append("Its cost cannot be compared: a setup answered no request.")
    else:
        parts.append(
            f"On the mixed stream it costs {_times(s.cost_multiple)} as much per million "
            f"classifications (${multi.usd_per_million:.4f} against "
            f"${enc.usd_per_million:.4f} on {r.instance}), answering "
            f"{multi.median_texts_per_s:.1f} texts/s against {enc.median_texts_per_s:.1f}."
        )
    parts.append(
        f"It takes {_times(s.memory_multiple)} the memory for all tasks "
        f"({multi.median_rss_mb:.0f} MB against {enc.median_rss_mb:.0f} MB of server RSS)."
    )
    parts.append(_verdict(len(more), len(less), s.cost_multiple))
    return " ".join(parts)


def _verdict(more: int, less: int, cost: float | None) -> str:
    """Which setup the numbers favour, or that they trade accuracy against cost."""
    accuracy = "more" if more > less else "less" if less > more else "even"
    cheaper = None if cost is None else cost < 1
    if accuracy == "more" and cheaper:
        return "More accurate on most tasks and cheaper: here one model for these tasks pays."
    if accuracy == "less" and cheaper is False:
        return "Less accurate on most tasks and dearer: here one encoder per task is the choice."
    if accuracy == "even" and cheaper is not None:
        winner = "the multi-task model" if cheaper else "one encoder per task"
        return f"Even on accuracy, so cost decides: {winner}."
    if cheaper is None:
        return "Accuracy alone decides here, task by task."
    return (
        "A trade: more accurate on most tasks, but dearer."
        if accuracy == "more"
        else "A trade: cheaper, but less accurate on most tasks."
    )


def accuracy_table(s: MultitaskSection) -> Table:
    """A row per task: each setup's served accuracy, the difference, and the answers' parity
    (the multi-task model is named in the answer and the stream table, the encoders here)."""
    multi, enc = s.record.multitask, s.record.per_task_encoders
    headers = [
        "Task",
        "Test rows",
        "Multi-task accuracy (%)",
        "Encoder",
        "Encoder accuracy (%)",
        "Multi-task - encoder (points)",
        "Answers equal to the run's (%, multi-task / encoder)",
    ]
    rows = []
    for t in s.tasks:
        a, b = multi.accuracy_of(t.task), enc.accuracy_of(t.task)
        test_rows = num(a.test_rows, "d")
        if b.test_rows != a.test_rows:
            test_rows += f" / {num(b.test_rows, 'd')}"
        rows.append(
            [
                t.task,
                test_rows,
                pct(a.accuracy),
                b.model,
                pct(b.accuracy),
                f"{t.points:+.2f}",
                f"{pct(a.answers_equal_to_run)} / {pct(b.answers_equal_to_run)}",
            ]
        )
    return headers, rows


def stream_table(s: MultitaskSection) -> Table:
    """A row per setup: the mixed stream's medians, memory for all tasks, and cost."""
    r = s.record
    headers = [
        "Setup",
        "Model files (MB)",
        "texts/s (median; rounds)",
        "p50 / p95 (ms)",
        "Memory for all tasks, RSS (MB; range)",
        f"$ per million ({r.instance})",
        "Errors",
    ]
    return headers, [_stream_row(x) for x in (r.multitask, r.per_task_encoders)]


def _stream_row(x: SetupResult) -> list[str]:
    files = " + ".join(f"{m.model_onnx_bytes / 1e6:.1f}" for m in x.models)
    rounds = " / ".join(f"{r.texts_per_s:.1f}" for r in x.rounds)
    return [
        x.name,
        files,
        f"{x.median_texts_per_s:.1f}; {rounds}",
        f"{x.median_p50_ms:.0f} / {x.median_p95_ms:.0f}",
        f"{x.median_rss_mb:.0f}; {x.min_rss_mb:.0f}-{x.max_rss_mb:.0f}",
        num(x.usd_per_million, ".4f"),
        str(x.errors),
    ]


def method_lines(s: MultitaskSection, page_instance: str) -> list[str]:
    """How the stream was run and priced, and where each figure was read."""
    r = s.record
    other = "" if r.instance == page_instance else f" (the page's other costs: {page_instance})"
    lines = [
        f"Mixed stream: {r.users} closed-loop users, each request one test text of a task "
        f"drawn at random; {r.seconds_per_round:g} s per round after {r.warmup_seconds:g} s "
        f"of warm-up, {r.rounds} rounds alternating the setups; medians over the rounds. "
        "Memory: the resident set of the server's process tree after a round, all tasks "
        f"served. $ per million at the median rate on {r.instance} (${r.usd_per_hour}/h, "
        f"`{r.price_table}`), as priced when measured{other}.",
        f"Measured {r.date} with `{r.command}`.",
        f"Throughput, latency, memory, cost and model sizes: `{s.source}`.",
    ]
    by_source: dict[tuple[str, str], list[str]] = {}
    for a in (*r.multitask.accuracy, *r.per_task_encoders.accuracy):
        by_source.setdefault((a.model, a.source), []).append(a.task)
    lines += [
        f"Accuracy of {', '.join(tasks)} ({model}): `{source}`."
        for (model, source), tasks in by_source.items()
    ]
    return lines


def markdown_lines(s: MultitaskSection, page_instance: str) -> list[str]:
    return [
        f"## {TITLE}",
        "",
        s.text,
        "",
        "### Accuracy per task",
        "",
        markdown(accuracy_table(s)),
        "### Mixed stream of all tasks",
        "",
        markdown(stream_table(s)),
        *(f"- {line}" for line in method_lines(s, page_instance)),
        "",
    ]


def to_json(s: MultitaskSection) -> dict[str, Any]:
    return {
        "source": s.source,
        "answer": s.text,
        "more_accurate_tasks": [t.task for t in s.more_accurate],
        "less_accurate_tasks": [t.task for t in s.less_accurate],
        "points_by_task": {t.task: t.points for t in s.tasks},
        "cost_multiple": s.cost_multiple,
        "memory_multiple": s.memory_multiple,
        "throughput_multiple": s.throughput_multiple,
        "record": s.record.to_json(),
    }
