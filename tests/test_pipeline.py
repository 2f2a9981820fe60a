"""The whole pipeline through the CLI, as a user runs it, on tiny models: `smallcls compare` on
a CSV trains all three families, exports fp32 + int8, runs a real `bentoml serve` on
127.0.0.1, Locust and the report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("torch")

from tests.tiny_models import SST2_TRAIN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _smallcls(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "smallcls", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _csv(src, dst, rows: int, *, header=("review", "sentiment")) -> str:
    """SST-2 rows as a CSV with the user's own column names."""
    import json

    with open(src, encoding="utf-8") as fh, open(dst, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for _, line in zip(range(rows), fh, strict=False):
            row = json.loads(line)
            writer.writerow([row["text"], row["label"]])
    return str(dst)


def test_compare_on_a_csv_end_to_end_with_three_families(tiny_dirs, tmp_path):
    """`smallcls compare` on a CSV with its own column names and no test file: the test split
    is carved, every family trains, exports, serves and is load-tested on it."""
    train = _csv(SST2_TRAIN, tmp_path / "reviews.csv", 360)
    common = dict(train_rows=200, max_val_rows=32, learning_rate=1e-3, threads=1, max_length=32)
    preset = {
        "loadtest_users": 2,
        "loadtest_seconds": 3,
        "loadtest_steps": [2],  # one sweep step per model keeps the test short
        "serve_threads": 1,
        "model_precisions": {"enc": ["fp32", "int8-fused"]},  # the others: fp32 and int8
        "models": [
            {"name": "enc", "family": "encoder", "base_model": str(tiny_dirs["bert"]), **common},
            {
                "name": "bidir",
                "family": "extracted_encoder",
                "layers": 2,
                "base_model": str(tiny_dirs["llama"]),
                **common,
            },
            {
                "name": "last",
                "family": "causal_lm",
                "head": "last_token",
                "base_model": str(tiny_dirs["llama"]),
                **common,
            },
        ],
    }
    preset_path = tmp_path / "preset.yaml"
    preset_path.write_text(yaml.safe_dump(preset))
    args = ["compare", train, "--text-column", "review", "--label-column", "sentiment"]
    args += ["--config", str(preset_path), "--out", str(tmp_path / "out"), "--quiet"]
    result = _smallcls(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / "out"
    data = out / "data" / "reviews"
    carved = [line for line in (data / "test.jsonl").read_text().splitlines() if line]
    assert len(carved) == 72  # 20% of 360, stratified, written once for every family
    names = {f"{m}-{p}" for m in ("bidir", "last") for p in ("fp32", "int8")}
    names |= {"enc-fp32", "enc-int8-fused"}
    models = out / "models"
    accepted = {p.name for p in models.iterdir() if p.name != "refused"}
    refused = {p.name for p in (models / "refused").glob("*")}
    # A tiny model's int8 may fail the accuracy gate: it is kept aside and the demo serves
    # the others; fp32 always passes (it is checked against torch).
    assert accepted | refused == names and not accepted & refused
    assert {f"{m}-fp32" for m in ("enc", "bidir", "last")} <= accepted
    for name in accepted:  # every manifest names the carved test file it was measured on
        manifest = json.loads((models / name / "manifest.json").read_text())
        assert manifest["dataset"]["test_path"] == str((data / "test.jsonl").resolve())
        assert manifest["dataset"]["name"] == "reviews"
        assert manifest["metrics"]["rows"] == 72
    with open(out / "report" / "report.csv", encoding="utf-8") as fh:
        rows = {row["name"]: row for row in csv.DictReader(fh)}
    assert set(rows) == accepted
    for row in rows.values():
        assert row["dataset"] == "reviews"
        assert int(row["requests"]) > 0, row
        assert int(row["failures"]) == 0, row
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["p95_ms"]) > 0
    assert (out / "report" / "report.html").is_file()
    # The GPU check reads the same report and manifests into its figures (bench/gpu_check.py).
    from bench.gpu_check import variant_rows

    figures = {r["name"]: r for r in variant_rows(out / "report", models, usd_per_hour=3.6)}
    assert set(figures) == accepted
    for name, figure in figures.items():
        assert figure["gate_checked_on"] == "cpu" and figure["accuracy"] is not None
        rate = float(rows[name]["texts_per_s_at_slo"] or 0) or None
        expected = None if rate is None else 3.6 / (rate * 3600) * 1e6
        assert figure["usd_per_million"] == pytest.approx(expected)
    # The load test sent the carved test texts, not some default file, and says so.
    sweep = json.loads((out / "loadtests" / "enc-fp32" / "sweep.json").read_text())
    assert sweep["steps"][0]["texts_source"] == str((data / "test.jsonl").resolve())
    carved_texts = {json.loads(line)["text"] for line in carved}
    for sent in (out / "loadtests" / "enc-fp32").rglob("texts.jsonl"):
        assert {json.loads(line)["text"] for line in sent.read_text().splitlines()} <= carved_texts
    assert "report:" in result.stdout and "| enc-fp32" in result.stdout.replace("|  ", "| ")

    live = re.compile(
        r"\[(step|probe|point) \d+/\d+\] \d+(/\d+)? s: \d+ users, [\d.]+ req/s, .* p95 "
    )
    assert not live.search(result.stderr)  # --quiet: no live load-test lines

    # Re-running reuses the complete runs instead of training again; without --quiet each
    # sweep step shows its live throughput and p95 on stderr.
    again = _smallcls(*[a for a in args if a != "--quiet"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing complete run") == 3
    assert live.search(again.stderr), again.stderr[-3000:]


def test_compare_refuses_bad_data_before_training(tmp_path):
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\na fine film,positive\nanother,positive\n")
    result = _smallcls("compare", str(one_class), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 1 and "at least two labels" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "runs").exists()
    result = _smallcls(
        "compare", str(one_class), "--text-column", "review", "--out", str(tmp_path / "o"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "review" in result.stderr, result.stderr


def test_cli_errors_are_one_clear_line(tmp_path):
    result = _smallcls("export", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 1  # a failure, not bad usage (2)
    assert "not a complete training run" in result.stderr
    assert "Traceback" not in result.stderr
