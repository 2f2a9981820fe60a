"""Tests for the comparison report: fake model, load-test and run directories in tmp_path."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from core.decision import DecisionRule
from core.manifest import Manifest, ManifestError
from core.preprocessing import Preprocessing
from loadtests.run import LoadSummary
from loadtests.sweep import SweepSummary
from reports.report import CSV_COLUMNS, ReportError, build_report


def _model_dir(
    root: Path,
    name: str,
    *,
    family: str = "encoder",
    precision: str = "fp32",
    size: int = 2_500_000,
    metrics: dict | None = None,
    parity: dict | None = None,
    parameters: int = 11_200_000,
    source_run: str = "",
) -> Path:
    model_dir = root / "models" / name
    model_dir.mkdir(parents=True)
    Manifest(
        name=name,
        family=family,  # type: ignore[arg-type]
        head="mean_pool",
        base_model=f"org/{name}-base",
        labels=["negative", "positive"],
        precision=precision,  # type: ignore[arg-type]
        preprocessing=Preprocessing(max_length=64),
        decision=DecisionRule(labels=["negative", "positive"]),
        source_run=source_run,
        parameters=parameters,
        metrics={"accuracy": 0.9151, "macro_f1": 0.9149} if metrics is None else metrics,
        parity={} if parity is None else parity,
    ).write(model_dir)
    (model_dir / "model.onnx").write_bytes(b"\0" * size)  # the report only stats the file
    return model_dir


def _loadtest_dir(root: Path, model: str, *, users: int = 8, p50: float = 11.0) -> Path:
    out = root / "loadtests" / f"{model}-u{users}"
    out.mkdir(parents=True)
    LoadSummary(
        model=model, users=users, run_time_s=20, batch=2, requests=9400, failures=3,
        failure_rate=3 / 9400, rps=470.0, texts_per_s=940.0,
        p50_ms=p50, p95_ms=22.0, p99_ms=30.0, mean_ms=12.5,
    ).write(out)  # fmt: skip
    return out


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    run_dir = tmp_path / "runs" / "minilm"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"train": {"seconds": 123.4}}))
    models = [
        _model_dir(tmp_path, "smollm-int8", family="causal_lm", precision="int8",
                   parity={"label_agreement_vs_fp32": 0.925}),
        _model_dir(tmp_path, "minilm-int8", precision="int8", size=1_000_000,
                   parity={"max_abs_logit_diff_vs_torch": 0.13,
                           "label_agreement_vs_fp32": 1.0}),
        _model_dir(tmp_path, "minilm-fp32", source_run=str(run_dir),
                   parity={"max_abs_logit_diff_vs_torch": 2e-6}),
    ]  # fmt: skip
    loadtests = [
        _loadtest_dir(tmp_path, "minilm-fp32", p50=11.0),
        _loadtest_dir(tmp_path, "minilm-int8", p50=6.0),
    ]
    return models, loadtests


def test_rows_join_sort_and_format(inputs: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    models, loadtests = inputs
    result = build_report(model_dirs=models, loadtest_dirs=loadtests, out_dir=tmp_path / "rep")

    # Sorted by family (encoder before causal_lm) then precision (fp32 before int8).
    assert [r.name for r in result.rows] == ["minilm-fp32", "minilm-int8", "smollm-int8"]
    fp32, int8, smollm = result.rows
    assert fp32.p50_ms == 11.0 and int8.p50_ms == 6.0  # joined by name, not by position
    assert fp32.train_seconds == 123.4 and int8.train_seconds is None
    assert int8.model_mb == pytest.approx(1.0) and fp32.model_mb == pytest.approx(2.5)
    assert fp32.parameters_m == pytest.approx(11.2)
    assert smollm.p50_ms is None and smollm.loadtest_dir is None

    lines = result.markdown.splitlines()
    assert len(lines) == 2 + 3
    header = lines[0]
    for unit in ("Accuracy (%)", "p50 (ms)", "p95 (ms)", "Throughput (req/s)",
                 "Throughput at SLO (texts/s)", "$ per million (aws-c7i.large)", "Size (MB)",
                 "Params (M)", "GFLOPs per example (est.)", "Train time (s)"):  # fmt: skip
        assert unit in header
    fp32_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert fp32_cells[:4] == ["minilm-fp32", "encoder", "fp32", "test"]
    assert "91.51" in fp32_cells and "91.49" in fp32_cells  # fractions shown as %
    assert "123" in fp32_cells and "2.5" in fp32_cells
    assert "3 of 9400" in fp32_cells and "470.0" in fp32_cells and "940.0" in fp32_cells
    # p95 22 ms meets the default 50 ms target: 940 texts/s priced at $0.08925/h.
    assert fp32.usd_per_million == pytest.approx(0.08925 / (940 * 3600) * 1e6)
    assert f"{fp32.usd_per_million:.4f}" in fp32_cells
    int8_cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert "100.00" in int8_cells  # label agreement 1.0
    smollm_cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert smollm_cells[4] == "91.51" and "92.50" in smollm_cells
    assert smollm_cells[6:15] == ["n/a"] * 9  # latency, users, throughput, cost, cpu, failures

    document = result.markdown_path.read_text()
    assert result.markdown in document and "## Sources" in document
    assert str(loadtests[0] / "summary.json") in document
    assert "smollm-int8: manifest" in document and "no load test" in document


def test_csv_has_raw_numbers(inputs: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    models, loadtests = inputs
    result = build_report(model_dirs=models, loadtest_dirs=loadtests, out_dir=tmp_path / "rep")
    with open(result.csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert set(CSV_COLUMNS) >= {
        "name", "family", "head", "precision", "base_model", "accuracy", "macro_f1",
        "max_abs_logit_diff_vs_torch", "label_agreement_vs_fp32", "p50_ms", "p95_ms", "rps",
        "texts_per_s", "users", "failures", "model_mb", "parameters_m", "train_seconds",
    }  # fmt: skip
    assert [r["name"] for r in rows] == ["minilm-fp32", "minilm-int8", "smollm-int8"]
    assert float(rows[0]["accuracy"]) == pytest.approx(0.9151)  # a fraction, not a percentage
    assert float(rows[0]["model_mb"]) == pytest.approx(2.5)
    assert int(rows[0]["requests"]) == 9400 and int(rows[0]["failures"]) == 3
    assert rows[2]["p50_ms"] == "" and rows[2]["rps"] == ""  # missing load test: empty cells


def test_run_dirs_override_source_run(
    inputs: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    models, loadtests = inputs
    moved = tmp_path / "moved-run"
    moved.mkdir()
    (moved / "metrics.json").write_text(json.dumps({"train": {"seconds": 7}}))
    result = build_report(
        model_dirs=models, loadtest_dirs=loadtests, out_dir=tmp_path / "rep",
        run_dirs=[moved, moved, moved],
    )  # fmt: skip
    assert [r.train_seconds for r in result.rows] == [7.0, 7.0, 7.0]
    with pytest.raises(ReportError, match="by position"):
        build_report(model_dirs=models, loadtest_dirs=[], out_dir=tmp_path / "r", run_dirs=[moved])


def test_several_loadtests_of_one_model_give_one_row_each(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "tiny-fp32")
    tests = [
        _loadtest_dir(tmp_path, "tiny-fp32", users=20),
        _loadtest_dir(tmp_path, "tiny-fp32", users=1),
    ]
    result = build_report(model_dirs=[model], loadtest_dirs=tests, out_dir=tmp_path / "rep")
    assert [r.users for r in result.rows] == [1, 20]


def test_missing_manifest_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "models" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"empty/manifest\.json not found"):
        build_report(model_dirs=[empty], loadtest_dirs=[], out_dir=tmp_path / "rep")


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "a-fp32")
    (model / "model.onnx").unlink()
    with pytest.raises(ReportError, match=r"a-fp32/model\.onnx not found"):
        build_report(model_dirs=[model], loadtest_dirs=[], out_dir=tmp_path / "rep")

    pct = _model_dir(tmp_path, "b-fp32", metrics={"accuracy": 91.5})
    with pytest.raises(ReportError, match=r"b-fp32/manifest\.json: metrics\.accuracy .* 0\.\.1"):
        build_report(model_dirs=[pct], loadtest_dirs=[], out_dir=tmp_path / "rep")

    good = _model_dir(tmp_path, "c-fp32")
    no_summary = tmp_path / "lt-empty"
    no_summary.mkdir()
    with pytest.raises(ReportError, match=r"lt-empty/summary\.json not found"):
        build_report(model_dirs=[good], loadtest_dirs=[no_summary], out_dir=tmp_path / "rep")

    stranger = _loadtest_dir(tmp_path, "someone-else")
    with pytest.raises(ReportError, match=r"someone-else-u8/summary\.json load-tested"):
        build_report(model_dirs=[good], loadtest_dirs=[stranger], out_dir=tmp_path / "rep")

    run = tmp_path / "bad-run"
    run.mkdir()
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"bad-run/metrics\.json is not valid JSON"):
        build_report(model_dirs=[good], loadtest_dirs=[], out_dir=tmp_path / "r", run_dirs=[run])


def _sweep_dir(root: Path, model: str, steps: list[tuple[int, float, float]], slo: float) -> Path:
    """A sweep directory as loadtests/sweep.py writes it; steps are (users, texts/s, p95)."""
    out = root / "sweeps" / model
    out.mkdir(parents=True)
    step_dicts = []
    for users, tps, p95 in steps:
        summary = LoadSummary(
            model=model, users=users, run_time_s=10, batch=1, requests=1000, failures=0,
            failure_rate=0.0, rps=tps, texts_per_s=tps, p50_ms=p95 / 2, p95_ms=p95,
            p99_ms=p95 * 1.5, mean_ms=p95 / 2, server_cpu_percent=150.0,
        )  # fmt: skip
        step_dir = out / f"users-{users:03d}"
        step_dir.mkdir()
        summary.write(step_dir)
        step_dicts.append({**dataclasses.asdict(summary), "dir": step_dir.name})
    meeting = [d for d in step_dicts if d["p95_ms"] <= slo]
    SweepSummary(
        model=model, slo_p95_ms=slo, max_failure_rate=0.01, batch=1, length="all",
        step_seconds=10, workers=0, machine="2-core Test CPU (Linux x86_64)", cpu_count=2,
        stop_reason="test", steps=step_dicts,
        at_slo=max(meeting, key=lambda d: d["texts_per_s"]) if meeting else None,
    ).write(out)  # fmt: skip
    return out


@pytest.fixture
def swept(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    models = [
        _model_dir(tmp_path, "enc-fp32", metrics={"accuracy": 0.88, "macro_f1": 0.88}),
        _model_dir(tmp_path, "enc-int8", precision="int8",
                   metrics={"accuracy": 0.87, "macro_f1": 0.87},
                   parity={"label_agreement_vs_fp32": 0.97}),
        _model_dir(tmp_path, "lm-int8", family="causal_lm", precision="int8",
                   metrics={"accuracy": 0.90, "macro_f1": 0.90}),
    ]  # fmt: skip
    sweeps = [
        _sweep_dir(tmp_path, "enc-fp32", [(1, 40.0, 20.0), (4, 100.0, 45.0), (8, 110.0, 90.0)], 50),
        _sweep_dir(tmp_path, "enc-int8", [(1, 60.0, 15.0), (4, 150.0, 30.0), (8, 200.0, 60.0)], 50),
        _sweep_dir(tmp_path, "lm-int8", [(1, 10.0, 120.0)], 50),
    ]
    return models, sweeps


def test_sweeps_give_the_operating_point_cost_and_recommendation(
    swept: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    models, sweeps = swept
    result = build_report(
        model_dirs=models, loadtest_dirs=sweeps, out_dir=tmp_path / "rep", html=False
    )
    rows = {r.name: r for r in result.rows}
    assert rows["enc-fp32"].users == 4 and rows["enc-fp32"].texts_per_s_at_slo == 100.0
    assert rows["enc-int8"].users == 4 and rows["enc-int8"].p95_1user_ms == 15.0
    assert rows["enc-int8"].usd_per_million == pytest.approx(0.08925 / (150 * 3600) * 1e6)
    assert rows["enc-int8"].machine == "2-core Test CPU (Linux x86_64)"
    assert rows["enc-int8"].step_dir.endswith("users-004")
    # Never met 50 ms: shown at its lightest step, with no throughput at SLO and no cost.
    lm = rows["lm-int8"]
    assert lm.users == 1 and not lm.meets_slo and lm.usd_per_million is None
    rec = result.recommendation
    assert (rec.choice, rec.runner_up) == ("enc-int8", "enc-fp32")

    # A looser target is recomputed from the steps: 8 users now count, and the LM qualifies.
    loose = build_report(
        model_dirs=models, loadtest_dirs=sweeps, out_dir=tmp_path / "rep2",
        latency_target_ms=150, accuracy_floor=0.89, html=False,
    )  # fmt: skip
    rows = {r.name: r for r in loose.rows}
    assert rows["enc-int8"].users == 8 and rows["lm-int8"].meets_slo
    assert loose.recommendation.choice == "lm-int8"

    document = result.markdown_path.read_text()
    assert "## Recommendation" in document and "Recommended: enc-int8" in document
    assert "## Accuracy cost of quantization" in document
    assert "| enc-int8 | enc-fp32 | -1.00 | 97.00 | 1.50 |" in document
    assert "measured on 2-core Test CPU" in document and "not measured" in document
    assert str(sweeps[0] / "sweep.json") in document  # every number traces to a file

    none = build_report(
        model_dirs=models, loadtest_dirs=sweeps, out_dir=tmp_path / "rep3",
        accuracy_floor=0.99, html=False,
    )  # fmt: skip
    assert none.recommendation.choice is None
    assert "No model meets the accuracy floor" in none.markdown_path.read_text()


def test_a_sweep_stopped_at_its_probe_is_reported_unpriced(tmp_path: Path) -> None:
    """A model too slow for the load at which its closed-loop probe refused too much has a
    sweep with no steps: the report shows it at the probe's latency with no cost instead of
    stopping; a sweep with neither steps nor probe says what to do."""
    models = [
        _model_dir(tmp_path, "enc-fp32", metrics={"accuracy": 0.88, "macro_f1": 0.88}),
        _model_dir(tmp_path, "lm-fp32", family="causal_lm", metrics={"accuracy": 0.9}),
    ]
    sweeps = [
        _sweep_dir(tmp_path, "enc-fp32", [(1, 40.0, 20.0)], 50),
        _sweep_dir(tmp_path, "lm-fp32", [], 50),
    ]
    data = json.loads((sweeps[1] / "sweep.json").read_text())
    probe = LoadSummary(
        model="lm-fp32", users=8, run_time_s=3, batch=1, requests=9, failures=5,
        failure_rate=5 / 9, rps=6.7, texts_per_s=6.7, p50_ms=1300.0, p95_ms=1300.0,
        p99_ms=1300.0, mean_ms=1171.0,
    )  # fmt: skip
    with_probe = {
        **data,
        "search": "rate",
        "probe": dataclasses.asdict(probe),
        "stop_reason": "the closed-loop probe failed (55.6% failed, 6.7 req/s)",
    }
    (sweeps[1] / "sweep.json").write_text(json.dumps(with_probe))
    result = build_report(model_dirs=models, loadtest_dirs=sweeps, out_dir=tmp_path / "r",
                          html=False)  # fmt: skip
    lm = {r.name: r for r in result.rows}["lm-fp32"]
    assert lm.p95_ms == 1300.0 and not lm.meets_slo and lm.usd_per_million is None
    assert result.recommendation.choice == "enc-fp32"

    (sweeps[1] / "sweep.json").write_text(json.dumps(data))  # no probe either
    with pytest.raises(ReportError, match="no steps and no probe: load-test lm-fp32 again"):
        build_report(model_dirs=models, loadtest_dirs=sweeps, out_dir=tmp_path / "r2",
                     html=False)  # fmt: skip


def test_manifest_with_newer_optional_fields_still_reads(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "new-fp16", precision="fp16")
    data = json.loads((model / "manifest.json").read_text())
    data["gate"] = {"passed": True}  # a field another stage may add
    (model / "manifest.json").write_text(json.dumps(data))
    result = build_report(model_dirs=[model], loadtest_dirs=[], out_dir=tmp_path / "rep",
                          html=False)  # fmt: skip
    assert result.rows[0].precision == "fp16"


def test_flops_estimate_uses_the_test_texts(tmp_path: Path) -> None:
    from tests.fakes import make_tiny_model_dir

    test = tmp_path / "data" / "mini" / "test.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text('{"text": "good movie", "label": 1}\n{"text": "a bad film", "label": 0}\n')
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    model = make_tiny_model_dir(tmp_path / "models" / "tiny-fp32", name="tiny-fp32")
    data = json.loads((model / "manifest.json").read_text())
    data["parameters"] = 1000
    # The report labels and measures the row with the dataset the manifest names.
    data["dataset"] = {"name": "mini", "train_path": "", "test_path": str(test)}
    (model / "manifest.json").write_text(json.dumps(data))
    result = build_report(model_dirs=[model], loadtest_dirs=[], out_dir=tmp_path / "rep",
                          run_dirs=[run], html=False)  # fmt: skip
    row = result.rows[0]
    assert row.dataset == "mini" and row.mean_tokens == pytest.approx(2.5)
    assert row.gflops_per_example == pytest.approx(2 * 1000 * 2.5 / 1e9)
