"""The answer page across datasets, on constructed pipeline outputs (tests/answer_fixtures.py):
the join across datasets whose models share names, prices at several latency targets, the
summary matrix, the plain-words answers, per-class F1 and confusion matrices, and the files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from reports.answer import InputGroup, group_from_output
from reports.answer_logic import answer, cheapest_within, matrix
from reports.answer_page import answer_page, build_answer_page
from reports.cost import DEFAULT_PRICES, load_prices
from reports.inputs import ReportError
from tests.answer_fixtures import model_dir, sweep_dir, two_datasets, write_test_file

PRICE = load_prices(DEFAULT_PRICES).measured.usd_per_hour  # $/h of the measured instance


def usd(texts_per_s: float) -> float:
    return PRICE / (texts_per_s * 3600) * 1e6


@pytest.fixture
def outputs(tmp_path: Path) -> tuple[Path, Path]:
    return two_datasets(tmp_path)


def _flat(outputs: tuple[Path, ...]) -> InputGroup:
    """Every model dir and load test in one list, as `--models ... --loadtests ...` gives."""
    groups = [group_from_output(o) for o in outputs]
    return InputGroup(
        model_dirs=[d for g in groups for d in g.model_dirs],
        loadtest_dirs=[d for g in groups for d in g.loadtest_dirs],
    )


def test_models_of_the_same_name_join_their_own_datasets_load_tests(outputs) -> None:
    page = answer_page([_flat(outputs)], latency_targets=[50])
    assert list(page.datasets) == ["sst2", "trec"]
    sst2 = {e.name: e for e in page.datasets["sst2"]}
    trec = {e.name: e for e in page.datasets["trec"]}
    # Same names, different sweeps: each read the texts of its own dataset's test split.
    assert sst2["minilm-fp32"].at(50).texts_per_s == 300.0
    assert trec["minilm-fp32"].at(50).texts_per_s == 500.0
    assert Path(trec["minilm-fp32"].loadtest_dir).parent.parent == outputs[1]
    assert [p.users for p in sst2["minilm-fp32"].curve] == [1, 4, 8]  # the whole sweep


def test_a_load_test_of_another_test_file_is_refused(outputs, tmp_path: Path) -> None:
    a, _ = outputs
    group = group_from_output(a)
    other = write_test_file(tmp_path / "elsewhere", "sst2", [("x", "positive")])
    stray = sweep_dir(tmp_path / "stray", "minilm-fp32", other, [(1, 10.0, 10.0)])
    b_models = group_from_output(outputs[1]).model_dirs
    with pytest.raises(ReportError, match="several model dirs of that name"):
        answer_page([InputGroup(model_dirs=group.model_dirs + b_models,
                                loadtest_dirs=[stray])], latency_targets=[50])  # fmt: skip


def test_every_model_is_priced_at_every_target(outputs) -> None:
    page = answer_page([group_from_output(o) for o in outputs], latency_targets=[50, 20, 100, 200])
    assert page.collected.targets == [20, 50, 100, 200] and page.collected.primary_target == 50
    sst2 = {e.name: e for e in page.datasets["sst2"]}
    fp32 = sst2["minilm-fp32"]
    assert [fp32.at(t).texts_per_s for t in (20, 50, 100, 200)] == [100.0, 300.0, 400.0, 400.0]
    assert fp32.at(50).usd_per_million == pytest.approx(usd(300.0))
    assert fp32.at(100).usd_per_million == pytest.approx(usd(400.0))
    # The causal LM misses 20 and 50 ms at every load, yet has a cost at the looser targets.
    lm = sst2["smollm2-last-fp32"]
    assert not lm.at(50).meets and lm.at(50).usd_per_million is None
    assert lm.at(100).usd_per_million == pytest.approx(usd(30.0))
    assert lm.at(200).usd_per_million == pytest.approx(usd(60.0))
    assert lm.at(200).step_summary.endswith("users-004/summary.json")


def test_summary_matrix_best_and_cheapest_within_one_point(outputs) -> None:
    page = answer_page([group_from_output(o) for o in outputs], latency_targets=[50])
    cells = {(c.dataset, c.family): c for c in page.cells}
    assert set(cells) == {(d, f) for d in ("sst2", "trec") for f in ("encoder", "causal_lm")}
    enc = cells["sst2", "encoder"]
    assert enc.best.name == "minilm-fp32" and enc.best_cost == pytest.approx(usd(300.0))
    # int8 is 0.5 points below fp32 and cheaper: the cheapest within 1 point.
    assert enc.cheapest_close.name == "minilm-int8"
    assert enc.cheapest_cost == pytest.approx(usd(450.0))
    lm = cells["sst2", "causal_lm"]
    assert lm.best.name == "smollm2-last-fp32" and lm.best_cost is None  # missed 50 ms
    assert lm.cheapest_close is None


def test_within_one_point_is_one_point_of_the_headline_metric(outputs) -> None:
    entries = answer_page([group_from_output(outputs[0])], latency_targets=[50]).datasets["sst2"]
    encoders = [e for e in entries if e.family == "encoder"]
    assert cheapest_within(encoders, 50, tolerance=0.01).name == "minilm-int8"
    assert cheapest_within(encoders, 50, tolerance=0.001).name == "minilm-fp32"


def test_answer_names_the_winning_family_its_margin_and_cost_multiple(outputs) -> None:
    page = answer_page([group_from_output(o) for o in outputs], latency_targets=[50, 100])
    trec = page.answers["trec"]
    # All three are within 1 point of the best (the causal LM, 96.2%); int8 MiniLM is cheapest.
    assert trec.winner.name == "minilm-int8" and trec.rival.name == "smollm2-last-fp32"
    assert trec.target_ms == 50
    assert trec.points_vs_rival == pytest.approx(-0.7)
    assert trec.cost_multiple == pytest.approx(600.0 / 40.0)
    assert trec.text.startswith("trec: encoder wins with minilm-int8, 95.50% accuracy")
    assert "0.70 points less than the best causal LM (smollm2-last-fp32, 96.20%)" in trec.text
    assert "1/15.0 of its cost" in trec.text

    # On sst2 only the causal LM is within 1 point of the best, and it has no cost at 50 ms:
    # the answer moves to the next target and says so.
    sst2 = page.answers["sst2"]
    assert sst2.winner.name == "smollm2-last-fp32" and sst2.target_ms == 100
    assert "since nothing within 1 point of the best met 50 ms" in sst2.text
    assert sst2.points_vs_rival == pytest.approx(3.0)
    assert sst2.cost_multiple == pytest.approx(30.0 / 400.0)  # it costs 13 times as much
    assert "3.00 points more" in sst2.text and "13.3 times its cost" in sst2.text


def test_answer_without_any_cost_says_what_to_do(outputs) -> None:
    entries = answer_page([group_from_output(outputs[0])], latency_targets=[5]).datasets["sst2"]
    said = answer("sst2", entries, [5])
    assert said.winner is None and said.best.name == "smollm2-last-fp32"
    assert "none has a cost" in said.text


def test_matrix_skips_models_without_a_score(outputs) -> None:
    entries = answer_page([group_from_output(outputs[0])], latency_targets=[50]).datasets["sst2"]
    unscored = [type(e)(**{**e.__dict__, "score": None}) for e in entries]
    assert matrix({"sst2": unscored}, 50) == []


def test_confusion_matrix_is_computed_from_the_runs_answers_when_not_recorded(outputs) -> None:
    page = answer_page([group_from_output(outputs[1])], latency_targets=[50])
    lm = next(e for e in page.datasets["trec"] if e.family == "causal_lm")
    # Truth ABBR, DESC, DESC, NUM; answers ABBR, NUM, DESC, NUM.
    assert lm.classes.confusion == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert lm.classes.f1["NUM"] == pytest.approx(2 / 3) and lm.classes.f1["ABBR"] == 1.0
    assert "test_predictions.jsonl" in lm.classes.source
    assert lm.classes.top_confusions() == [("DESC", "NUM", 1)]
    enc = next(e for e in page.datasets["trec"] if e.name == "minilm-fp32")
    assert enc.classes.source.endswith("minilm-fp32/manifest.json")  # recorded: read, not made


def test_macro_f1_datasets_are_judged_by_macro_f1(tmp_path: Path) -> None:
    labels = ["joy", "anger"]
    test = write_test_file(tmp_path, "goemotions", [("a", "joy")])
    model_dir(tmp_path, "m-fp32", dataset="goemotions", test_path=test, labels=labels,
              accuracy=0.30, macro_f1=0.45)  # fmt: skip
    sweep_dir(tmp_path, "m-fp32", test, [(1, 50.0, 20.0)])
    page = answer_page([group_from_output(tmp_path)], latency_targets=[50])
    (entry,) = page.datasets["goemotions"]
    assert entry.metric == "macro_f1" and entry.score == 0.45
    assert "45.00% macro-F1" in page.answers["goemotions"].text


def test_page_files_cite_publications_and_trace_every_number(outputs, tmp_path: Path) -> None:
    result = build_answer_page([group_from_output(o) for o in outputs], tmp_path / "page",
                               latency_targets=[50, 100, 200], html=False)  # fmt: skip
    md = result.markdown_path.read_text()
    assert "## Answers" in md and "## Summary (p95 <= 50 ms, aws-c7i.large)" in md
    # Published figures by title and link, never without one.
    assert "Convolutional Neural Networks for Sentence Classification" in md
    assert "https://arxiv.org/abs/1408.5882" in md and "https://arxiv.org/abs/1810.04805" in md
    assert "issue" not in md.lower()
    for o in outputs:  # each model's manifest, sweep and the step priced at each target
        for name in ("minilm-fp32", "minilm-int8", "smollm2-last-fp32"):
            assert str(o / "models" / name / "manifest.json") in md
            assert str(o / "loadtests" / name / "sweep.json") in md
    assert str(outputs[0] / "loadtests/smollm2-last-fp32/users-004/summary.json") in md
    assert "### Confusion matrix: minilm-int8" in md

    with open(result.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 3 * 3  # datasets x models x targets
    lm_200 = next(r for r in rows if r["dataset"] == "sst2" and r["model"] == "smollm2-last-fp32"
                  and r["target_p95_ms"] == "200")  # fmt: skip
    assert float(lm_200["usd_per_million"]) == pytest.approx(usd(60.0))
    assert lm_200["published_source"].endswith("(https://arxiv.org/abs/1810.04805)")

    data = json.loads(result.json_path.read_text())
    assert data["datasets"]["trec"]["winner"] == "minilm-int8"
    assert data["datasets"]["trec"]["reference"]["url"] == "https://arxiv.org/abs/1408.5882"
    assert {(s["dataset"], s["family"]) for s in data["summary"]} == {
        (d, f) for d in ("sst2", "trec") for f in ("encoder", "causal_lm")
    }


def test_cli_report_from_output_dirs_writes_one_page(outputs, tmp_path: Path, capsys) -> None:
    from smallcls.cli import main

    out = tmp_path / "page"
    args = [
        "report",
        "--from",
        *map(str, outputs),
        "--latency-targets",
        "50,100",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trec: encoder wins with minilm-int8" in printed
    for name in ("answer.md", "answer.csv", "answer.json", "answer.html"):
        assert (out / name).is_file()
    html = (out / "answer.html").read_text()
    assert "href='https://arxiv.org/abs/1408.5882'" in html


def test_cli_refuses_bad_latency_targets(capsys) -> None:
    from smallcls.cli import main

    with pytest.raises(SystemExit):
        main(["report", "--from", "x", "--latency-targets", "50,-1"])
    assert "expected distinct targets > 0 ms" in capsys.readouterr().err


def test_report_shows_only_price_figures_that_name_their_publication(tmp_path: Path) -> None:
    from reports.report import build_report
    from tests.test_report import _model_dir

    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "measured_as: cpu-2\n"
        "instances:\n  - {name: cpu-2, provider: x, vcpus: 2, usd_per_hour: 0.09}\n"
        "references:\n"
        "  - {what: uncited figure, usd_per_million: 0.25, source: not recorded}\n"
        "  - {what: cited figure, usd_per_million: 0.5, title: A Paper, url: 'https://x.org/p'}\n"
    )
    result = build_report(
        model_dirs=[_model_dir(tmp_path, "m-fp32")], loadtest_dirs=[], out_dir=tmp_path / "r",
        prices=prices,
    )  # fmt: skip
    md = result.markdown_path.read_text()
    assert "| (reference) cited figure | | 0.5 | published | “A Paper” (https://x.org/p) |" in md
    assert "uncited figure" not in md
    assert "1 published figure(s) in the price table name no publication" in md
    html = result.html_path.read_text()
    assert "cited figure" in html and "uncited figure" not in html


def test_exports_the_gate_refused_are_listed_with_the_reason(outputs, tmp_path: Path) -> None:
    result = build_answer_page([group_from_output(o) for o in outputs], tmp_path / "page",
                               latency_targets=[50], html=False)  # fmt: skip
    (refused,) = result.page.collected.refused["sst2"]
    assert refused.name == "smollm2-last-int8"
    assert "smollm2-last-int8" not in {e.name for e in result.page.datasets["sst2"]}
    md = result.markdown_path.read_text()
    assert (
        "refused by the accuracy gate, so it is not served or priced: agrees with fp32 on "
        "97.00% of test rows" in md
    )
    assert str(outputs[0] / "models/refused/smollm2-last-int8/manifest.json") in md


def test_a_tie_with_the_winner_is_called_as_accurate(outputs) -> None:
    """Two encoders of equal score, neither priced at 50 ms: the best (by name) is not the
    winner (the cheaper at 100 ms), and the answer says they are as accurate, not "0.00
    points better"."""
    import dataclasses

    entries = answer_page([group_from_output(outputs[0])], latency_targets=[50, 100]).datasets[
        "sst2"
    ]

    def unpriced_at_50(e):
        points = [
            dataclasses.replace(t, meets=False) if t.target_ms == 50 else t for t in e.targets
        ]
        return dataclasses.replace(e, targets=points)

    by_name = {e.name: e for e in entries}
    tied = [
        unpriced_at_50(dataclasses.replace(by_name["minilm-fp32"], score=0.9)),
        unpriced_at_50(dataclasses.replace(by_name["minilm-int8"], score=0.9)),
        dataclasses.replace(by_name["smollm2-last-fp32"], score=0.8),
    ]
    said = answer("sst2", tied, [50, 100])
    assert said.winner.name == "minilm-int8" and said.best.name == "minilm-fp32"
    assert "The most accurate, minilm-fp32 (90.00%), is as accurate at" in said.text
    assert "is 0.00 points" not in said.text
