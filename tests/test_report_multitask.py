"""The answer page's section "One model for many tasks", on constructed records
(tests/answer_fixtures.py `multitask_record`): the record's contract, the numbers and the
computed answer on the page, clear errors for bad files, and no section unless asked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.multitask_measure import MultitaskMeasure, MultitaskMeasureError
from reports.answer import group_from_output
from reports.answer_multitask import read_multitask
from reports.answer_page import build_answer_page
from reports.cost import DEFAULT_PRICES, load_prices
from reports.inputs import ReportError
from tests.answer_fixtures import multitask_record, two_datasets

TITLE = "One model for many tasks"
MULTI = {"sst2": 0.826, "trec": 0.86, "ag_news": 0.84}
ENCODERS = {"sst2": 0.792, "trec": 0.844, "ag_news": 0.856}
PRICE = load_prices(DEFAULT_PRICES).measured.usd_per_hour


def usd(texts_per_s: float) -> float:
    return PRICE / (texts_per_s * 3600) * 1e6


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return multitask_record(tmp_path, multi=MULTI, encoders=ENCODERS)


def _flipped(tmp_path: Path) -> Path:
    """The same record with the setups' numbers swapped: accuracy, rate and memory."""
    return multitask_record(
        tmp_path / "flipped", multi=ENCODERS, encoders=MULTI,
        multi_rates=(224.9, 230.3, 219.7), encoder_rates=(26.9, 27.4, 28.7),
        multi_rss=(593.0, 599.0, 605.0), encoder_rss=(848.0, 879.0, 1121.0),
    )  # fmt: skip


def _page(tmp_path: Path, multitask: Path | None, html: bool = False):
    outputs = two_datasets(tmp_path / "outputs")
    groups = [group_from_output(o) for o in outputs]
    return build_answer_page(groups, tmp_path / "page", latency_targets=[50], html=html,
                             multitask=multitask)  # fmt: skip


# ---- the record ----------------------------------------------------------------------------


def test_the_record_round_trips_through_its_json(record: Path) -> None:
    read = MultitaskMeasure.read(record)
    data = json.loads(record.read_text())
    assert data["schema_version"] == 1
    assert MultitaskMeasure.from_json(json.loads(json.dumps(read.to_json()))) == read
    assert read.to_json() == data
    # The medians are the rounds' medians, the memory's range their extremes.
    multi = read.multitask
    assert multi.median_texts_per_s == 27.4 and multi.median_rss_mb == 879.0
    assert (multi.min_rss_mb, multi.max_rss_mb) == (848.0, 1121.0)
    assert multi.usd_per_million == pytest.approx(usd(27.4))
    assert read.per_task_encoders.accuracy_of("ag_news").accuracy == 0.856


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=0), "schema version 0"),
        (lambda d: d.pop("multitask"), "multitask must be a mapping"),
        (lambda d: d["multitask"]["accuracy"].pop(), "every task needs its accuracy"),
        (lambda d: d["multitask"]["accuracy"][0].update(accuracy=82.6), "accuracy must be in"),
        (lambda d: d["per_task_encoders"]["rounds"][0].update(p95_ms="fast"), "must be a number"),
        (lambda d: d.update(colour="blue"), "unknown record keys ['colour']"),
        (lambda d: d["multitask"].pop("median_p95_ms"), "incomplete multitask"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_file_and_field(record: Path, change, message):
    data = json.loads(record.read_text())
    change(data)
    record.write_text(json.dumps(data))
    with pytest.raises(MultitaskMeasureError, match=re.escape(message)) as caught:
        MultitaskMeasure.read(record)
    assert str(record) in str(caught.value)


# ---- the section ---------------------------------------------------------------------------


def test_the_section_shows_each_tasks_accuracy_the_stream_and_their_sources(
    record: Path, tmp_path: Path
) -> None:
    result = _page(tmp_path, record, html=True)
    md = result.markdown_path.read_text()
    section = md[md.index(f"## {TITLE}") : md.index("## Method")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()}
    assert "| 82.60 |" in rows["sst2"] and "| 79.20 |" in rows["sst2"] and "+3.40" in rows["sst2"]
    assert "| 84.00 |" in rows["ag_news"] and "| 85.60 |" in rows["ag_news"]
    assert "-1.60" in rows["ag_news"] and "100.00 / 100.00" in rows["ag_news"]
    multi = rows["one multitask-smollm2-fp32 for 3 tasks"]
    assert "| 539.6 |" in multi and "27.4; 26.9 / 27.4 / 28.7" in multi
    assert "| 879; 848-1121 |" in multi and f"| {usd(27.4):.4f} |" in multi
    encoders = rows["3 x minilm-fp32"]
    assert "90.4 + 90.4 + 90.4" in encoders and f"| {usd(224.9):.4f} |" in encoders
    assert "| 599; 593-605 |" in encoders
    # Every figure names its file: the record, and each accuracy's manifest.
    assert f"`{record}`" in section
    assert "models/minilm-trec-fp32/manifest.json" in section
    assert "Accuracy of sst2, trec, ag_news (multitask-smollm2-fp32): `" in section
    assert "models/multitask-smollm2-fp32/manifest.json" in section
    assert "bench.multitask_serving measure" in section and "2026-12-01" in section
    html = result.html_path.read_text()
    assert f"<h2>{TITLE}</h2>" in html and "879; 848-1121" in html
    data = json.loads(result.json_path.read_text())["multitask"]
    assert data["source"] == str(record)
    assert data["points_by_task"] == {"sst2": 3.4, "trec": 1.6, "ag_news": -1.6}
    assert data["cost_multiple"] == pytest.approx(224.9 / 27.4)
    assert data["memory_multiple"] == pytest.approx(879 / 599)
    assert data["record"]["multitask"]["median_texts_per_s"] == 27.4


def test_the_answer_is_computed_from_the_numbers_and_flips_with_them(
    record: Path, tmp_path: Path
) -> None:
    text = read_multitask(record).text
    assert "more accurate than one encoder per task (3 x minilm-fp32) on 2 of 3" in text
    assert "sst2 +3.40 points, trec +1.60 points" in text
    assert "less accurate on 1 (ag_news -1.60 points)" in text
    assert "costs 8.2 times as much per million" in text
    assert "1.5 times the memory for all tasks (879 MB against 599 MB" in text
    assert text.endswith("A trade: more accurate on most tasks, but dearer.")

    flipped = read_multitask(_flipped(tmp_path)).text
    assert "on 1 of 3 (ag_news +1.60 points), less accurate on 2" in flipped
    assert "costs 0.12 times as much" in flipped and "0.68 times the memory" in flipped
    assert flipped.endswith("A trade: cheaper, but less accurate on most tasks.")


@pytest.mark.parametrize(
    ("multi", "encoders", "fast", "verdict"),
    [
        (MULTI, ENCODERS, True, "here one model for these tasks pays"),
        (ENCODERS, MULTI, False, "here one encoder per task is the choice"),
        (MULTI, MULTI, True, "Even on accuracy, so cost decides: the multi-task model"),
    ],
)
def test_the_verdict_follows_accuracy_and_cost(tmp_path, multi, encoders, fast, verdict):
    rates = {"multi_rates": (300.0, 310.0, 320.0)} if fast else {}
    path = multitask_record(tmp_path, multi=multi, encoders=encoders, **rates)
    text = read_multitask(path).text
    assert verdict in text
    if multi == encoders:
        assert "on 0 of 3, as accurate on 3" in text


# ---- errors and the option -----------------------------------------------------------------


def _cli(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    from smallcls.cli import main

    outputs = two_datasets(tmp_path / "outputs")
    out = tmp_path / "page"
    code = main(["report", "--from", *map(str, outputs), "--out", str(out), "--no-html", *extra])
    return code, out


def test_cli_adds_the_section_and_prints_its_answer(record: Path, tmp_path: Path, capsys):
    code, out = _cli(tmp_path, "--multitask", str(record))
    assert code == 0
    assert "one multi-task model (multitask-smollm2-fp32)" in capsys.readouterr().out
    assert f"## {TITLE}" in (out / "answer.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found: write it with `python -m bench.multitask_serving measure`"),
        ("{not json", "is not valid JSON"),
        ('{"schema_version": 1, "tasks": ["sst2"]}', "multitask must be a mapping"),
    ],
)
def test_a_missing_or_malformed_file_fails_naming_it_and_writes_no_page(
    tmp_path: Path, capsys, content, message
) -> None:
    path = tmp_path / "mt" / "multitask_measure.json"
    if content is not None:
        path.parent.mkdir()
        path.write_text(content)
    code, out = _cli(tmp_path, "--multitask", str(path))
    err = capsys.readouterr().err
    assert code == 1
    assert str(path) in err and message in err
    assert not out.exists()  # no half page
    with pytest.raises(ReportError, match="--multitask"):
        read_multitask(path)


def test_without_the_option_the_page_has_no_section(tmp_path: Path) -> None:
    result = _page(tmp_path, None, html=True)
    assert TITLE not in result.markdown_path.read_text()
    assert TITLE not in result.html_path.read_text()
    assert "multitask" not in json.loads(result.json_path.read_text())
    assert result.page.multitask is None


# ---- the measurement prints what it writes -------------------------------------------------


def test_measure_prints_the_records_own_medians(record: Path, capsys) -> None:
    from bench.multitask_serving import print_medians

    read = MultitaskMeasure.read(record)
    print_medians(read)
    printed = capsys.readouterr().out
    multi = next(line for line in printed.splitlines() if line.startswith("| one multitask"))
    assert "| 539.6 MB | 27.4 | 146 | 219 | 879 (848-1121) |" in multi
    assert f"| {read.multitask.usd_per_million:.4f} ({read.instance}) | 0 |" in multi


def test_measure_reads_each_tasks_accuracy_from_the_served_manifest(tmp_path: Path) -> None:
    from bench.multitask_serving import Setup, _served
    from tests.answer_fixtures import SST2, model_dir, write_test_file

    test = write_test_file(tmp_path, "sst2", [("good", "positive")])
    folder = model_dir(tmp_path, "minilm-sst2-fp32", dataset="sst2", test_path=test,
                       labels=SST2, accuracy=0.792)  # fmt: skip
    setup = Setup("1 x minilm-fp32", [folder], {"sst2": {"model": "minilm-sst2-fp32"}})
    models, accuracy = _served(setup, ["sst2"])
    assert [m.name for m in models] == ["minilm-sst2-fp32"]
    assert accuracy[0].accuracy == 0.792 and accuracy[0].test_rows == 10
    assert accuracy[0].source == str(folder / "manifest.json")
