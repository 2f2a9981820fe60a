"""The accuracy benchmark's grid: every cell has a valid config and the table carries the
published reference and the budget beside our figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.accuracy import BUDGETS, FAMILIES, cell_config, headline, write_table
from core.data import BENCHMARKS


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


def _cell(family: str, ours: float, flops: float, params: float) -> dict:
    return {
        "dataset": "sst2",
        "family": family,
        "metric": "accuracy",
        "ours": ours,
        "macro_f1": ours,
        "extra": "",
        "reference": BENCHMARKS["sst2"].reference_value,
        "parameters": params,
        "train_rows": 2000,
        "test_rows": 872,
        "epochs": 2,
        "max_length": 64,
        "train_seconds": 10.0,
        "tokens_seen": 1000,
        "estimated_flops": flops,
        "budget_note": "",
    }


def test_plots_join_the_k_sweep_in_order_and_name_untrained_cells(tmp_path):
    pytest.importorskip("plotly")
    from bench.accuracy_plots import dataset_figure

    rows = [
        _cell("minilm", 0.88, 1e13, 22e6),
        _cell("smollm2-zeroshot", 0.77, 0, 134e6),
        _cell("smollm2-bidir-l12", 0.79, 2e13, 70e6),
        _cell("smollm2-bidir-l4", 0.70, 1e13, 40e6),
        _cell("smollm2-bidir-l8", 0.75, 1.5e13, 55e6),
        _cell("smollm2-bidir-l12-mntp", 0.81, 3e13, 70e6),
    ]
    by_flops = dataset_figure("sst2", rows, "estimated_flops")
    traces = {t.name: t for t in by_flops.data}
    assert list(traces["K sweep"].y) == pytest.approx([70.0, 75.0, 79.0])  # K = 4, 8, 12
    assert list(traces["K sweep + MNTP"].y) == pytest.approx([81.0])
    assert "smollm2-zeroshot" not in [f for t in by_flops.data for f in (t.text or ())]
    assert "not shown (no estimated training FLOPs): smollm2-zeroshot" in by_flops.layout.title.text
    by_params = dataset_figure("sst2", rows, "parameters")
    causal = next(t for t in by_params.data if t.name == "causal lm")
    assert list(causal.text) == ["smollm2-zeroshot"] and list(causal.y) == pytest.approx([77.0])

    write_table(rows, tmp_path, "python -m bench.accuracy --budget cpu", BUDGETS["cpu"])
    page = (tmp_path / "accuracy.html").read_text()
    # Two plots, plotly.js embedded once: the page opens from disk with no network.
    assert page.count("Plotly.newPlot") == 2 and page.count("plotly.js v") == 1
    assert "sst2: accuracy vs parameters" in page


def test_cells_train_with_progress_unless_quiet(tmp_path, monkeypatch):
    import json

    import training.train
    from bench.accuracy import run_cell

    seen: list[bool] = []

    def fake_train(config, runs_dir, *, show_progress):
        seen.append(show_progress)
        run = Path(runs_dir) / config.name
        run.mkdir(parents=True, exist_ok=True)
        metrics = {"train": {"parameters": 1, "rows": 8}, "test": {"accuracy": 0.5, "rows": 4}}
        (run / "metrics.json").write_text(json.dumps(metrics))
        return run

    monkeypatch.setattr(training.train, "train", fake_train)
    config = cell_config("sst2", "minilm", BUDGETS["cpu"], tmp_path)
    assert run_cell(config, tmp_path, BUDGETS["cpu"])["ours"] == 0.5
    run_cell(config, tmp_path, BUDGETS["cpu"], show_progress=False)
    assert seen == [True, False]
