"""bench/answer_page.py sizes `smallcls compare`'s config to its budget, on the real benchmark
files (../shared/datasets); nothing is trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.answer_page import BUDGETS, dataset_config, main
from core.benchmarks import benchmark_paths


def test_a_dataset_is_sliced_to_the_budget_and_swept_to_the_loosest_target(tmp_path: Path):
    budget = BUDGETS["micro"]
    lines: list[str] = []
    config = dataset_config("ag_news", tmp_path, budget, families=None,
                            targets=[50, 200, 100], echo=lines.append)  # fmt: skip
    assert [m.family for m in config.models] == ["encoder", "extracted_encoder", "causal_lm"]
    assert all(m.train_rows == 64 for m in config.models)
    assert all(m.max_length == 128 for m in config.models)  # AG News' own length, capped
    test = Path(config.models[0].test_path)
    assert test == tmp_path / "ag_news" / "data" / "ag_news" / "test.jsonl"
    assert len(test.read_text().splitlines()) == budget.test_rows  # a slice of 7,600 rows
    # The training file is whole: each run subsamples it (seeded) to its own train_rows.
    full = len(benchmark_paths("ag_news")["train"].read_text().splitlines())
    assert len(Path(config.models[0].train_path).read_text().splitlines()) == full
    assert config.slo_p95_ms == 200 and config.loadtest_steps == budget.steps
    source = json.loads((test.parent / "SOURCE.json").read_text())
    assert source["rows"]["test"] == budget.test_rows


def test_families_pick_presets_and_unknown_datasets_stop(tmp_path: Path) -> None:
    config = dataset_config("trec", tmp_path, BUDGETS["cpu"], families=["encoder"],
                            targets=[50], echo=lambda _: None)  # fmt: skip
    assert [(m.name, m.train_rows) for m in config.models] == [("minilm", 4000)]
    with pytest.raises(SystemExit, match="unknown datasets"):
        main(["--datasets", "sst2,nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="single-label"):
        dataset_config("goemotions", tmp_path, BUDGETS["micro"], families=None, targets=[50],
                       echo=lambda _: None)  # fmt: skip
