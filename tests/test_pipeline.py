"""The whole pipeline through the CLI, as a user runs it, on tiny models: train all three
families, export fp32 + int8, a real `bentoml serve` on 127.0.0.1, Locust, the report."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("torch")

from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice

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


def test_demo_end_to_end_on_tiny_models(tiny_dirs, tmp_path):
    train = str(sst2_slice(SST2_TRAIN, tmp_path / "train.jsonl", 300))
    test = str(sst2_slice(SST2_TEST, tmp_path / "test.jsonl", 64))
    common = dict(
        train_path=train,
        test_path=test,
        train_rows=200,
        max_val_rows=32,
        learning_rate=1e-3,
        threads=1,
        max_length=32,
    )
    config = {
        "output_dir": str(tmp_path / "out"),
        "loadtest_users": 2,
        "loadtest_seconds": 3,
        "loadtest_steps": [2],  # one sweep step per model keeps the test short
        "serve_threads": 1,
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
    config_path = tmp_path / "demo.yaml"
    config_path.write_text(yaml.safe_dump(config))

    result = _smallcls("demo", "--config", str(config_path), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / "out"
    names = {f"{m}-{p}" for m in ("enc", "bidir", "last") for p in ("fp32", "int8")}
    models = out / "models"
    accepted = {p.name for p in models.iterdir() if p.name != "refused"}
    refused = {p.name for p in (models / "refused").glob("*")}
    # A tiny model's int8 may fail the accuracy gate: it is kept aside and the demo serves
    # the others; fp32 always passes (it is checked against torch).
    assert accepted | refused == names and not accepted & refused
    assert {f"{m}-fp32" for m in ("enc", "bidir", "last")} <= accepted
    with open(out / "report" / "report.csv", encoding="utf-8") as fh:
        rows = {row["name"]: row for row in csv.DictReader(fh)}
    assert set(rows) == accepted
    for row in rows.values():
        assert int(row["requests"]) > 0, row
        assert int(row["failures"]) == 0, row
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["p95_ms"]) > 0
    assert (out / "report" / "report.html").is_file()
    assert (out / "loadtests" / "enc-fp32" / "sweep.json").is_file()
    assert "report:" in result.stdout and "| enc-fp32" in result.stdout.replace("|  ", "| ")

    # Re-running reuses the complete runs instead of training again.
    again = _smallcls("demo", "--config", str(config_path), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing complete run") == 3


def test_cli_errors_are_one_clear_line(tmp_path):
    result = _smallcls("export", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    assert "not a complete training run" in result.stderr
    assert "Traceback" not in result.stderr
