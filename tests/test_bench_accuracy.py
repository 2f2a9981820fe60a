"""The accuracy benchmark's grid: every cell has a valid config and the table carries the
published reference and the budget beside our figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.accuracy import BUDGETS, FAMILIES, cell_config, headline, write_table
from smallcls.data import BENCHMARKS


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_every_cell_has_a_valid_config(budget):
    families = [*FAMILIES, "smollm2-bidir-l6", "smollm2-bidir-l12-mntp", "minilm-distilled"]
    for dataset in BENCHMARKS:
        for family in families:
            config = cell_config(dataset, family, BUDGETS[budget], Path("runs"))
            if config is None:
                assert FAMILIES.get(family, {}).get("head") == "label_words"
                continue
            assert config.dataset == dataset and config.name == f"{dataset}-{family}"
            if budget == "gpu":
                assert config.train_rows is None and config.test_rows is None
    imdb = cell_config("imdb", "minilm", BUDGETS["gpu"], Path("runs"))
    assert imdb.max_length == 512 and imdb.truncation is None  # head_tail from the registry
    mntp = cell_config("sst2", "smollm2-bidir-l8-mntp", BUDGETS["gpu"], Path("runs"))
    assert mntp.layers == 8 and mntp.mntp_steps == 300


def test_table_puts_reference_and_budget_beside_ours(tmp_path):
    clinc_test = {
        "macro_f1": 0.9,
        "oos": {"in_scope_accuracy": 0.95, "oos_recall": 0.6, "rejection_threshold": 0.4},
        "oos_argmax": {"in_scope_accuracy": 0.96, "oos_recall": 0.3},
    }
    row = {
        "dataset": "clinc150",
        "family": "minilm",
        **headline("clinc150", clinc_test),
        "reference": BENCHMARKS["clinc150"].reference_value,
        "parameters": 22_700_000,
        "train_rows": 2000,
        "test_rows": 1000,
        "epochs": 2,
        "max_length": 64,
        "train_seconds": 12.0,
        "tokens_seen": 1000,
        "estimated_flops": 1e12,
        "budget_note": BUDGETS["cpu"].note,
    }
    failed = {"dataset": "sst2", "family": "smollm2-last", "error": "boom"}
    path = write_table(
        [row, failed], tmp_path, "python -m bench.accuracy --budget cpu", BUDGETS["cpu"]
    )
    text = path.read_text()
    assert "| clinc150 | minilm | in_scope_accuracy | 95.00% | 96.50% |" in text
    assert "OOS recall 0.600" in text and "NOT comparable" in text and "failed: boom" in text
    assert (tmp_path / "accuracy.csv").read_text().startswith("dataset,family,metric,")
