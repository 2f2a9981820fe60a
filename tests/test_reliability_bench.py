"""bench/reliability.py --quick on a tiny model: every check runs and behaves (no timings).

About 100 s on 2 cores: a real `bentoml serve` with 2 workers, several short Locust runs, a
worker SIGKILLed and replaced (BentoML notices within 10 s), then a SIGTERM drain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {
    "saturation",
    "overload 3x",
    "overload recovery",
    "soak errors",
    "soak memory",
    "soak latency",
    "soak CPU",
    "fuzz (schemathesis)",
    "hostile inputs",
    "worker SIGKILL",
    "SIGTERM drain",
}


@pytest.mark.slow
@pytest.mark.integration
def test_quick_reliability_run_has_every_row_and_the_behaviour(tmp_path: Path) -> None:
    model = make_tiny_model_dir(tmp_path / "alpha", name="alpha")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    # A tiny model answers faster than one Locust process can ask on 2 cores: a low
    # concurrency limit (2 requests per worker) makes sure 3x saturation is shed.
    cmd = [
        sys.executable, str(ROOT / "bench" / "reliability.py"), str(model), "--quick",
        "--out", str(out), "--env", "SMALLCLS_MAX_CONCURRENCY=4", "--max-users", "60",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    # Exit 1 is allowed: latency targets are for real models on an idle machine.
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "reliability.md").is_file()
    print(proc.stdout[-6000:])  # shown by pytest when an assertion below fails
    report = json.loads((out / "reliability.json").read_text())
    rows = {r["check"]: r for r in report["rows"]}
    assert set(rows) >= CHECKS, sorted(rows)
    for name, row in rows.items():
        assert not row["figure"].startswith("error:"), (name, row["figure"])
    assert rows["saturation"]["data"]["rps"] > 0

    overload = rows["overload 3x"]["data"]
    assert overload["shed"] > 0, rows["overload 3x"]["figure"]
    assert set(overload["shed_statuses"]) <= {429, 503}
    assert overload["other_errors"] == 0, rows["overload 3x"]["figure"]
    assert overload["accepted"] > 0

    kill = rows["worker SIGKILL"]["data"]
    assert kill["spawn_s"] is not None and kill["ready_s"] is not None, rows["worker SIGKILL"]
    assert isinstance(kill["failed"], int) and kill["requests"] > kill["failed"]

    drain = rows["SIGTERM drain"]["data"]
    assert drain["accepted"] > 0, rows["SIGTERM drain"]["figure"]
    assert drain["lost"] == 0, rows["SIGTERM drain"]["figure"]
    assert drain["exit_code"] == 0, rows["SIGTERM drain"]["figure"]

    soak = rows["soak errors"]["data"]
    assert soak["requests"] > 0
    shares = [p for p in rows["soak CPU"]["data"]["periods"] if "server_cores" in p]
    assert shares, rows["soak CPU"]["figure"]
    assert all(p["server_cores"] > 0 and p["other_cores"] >= 0 for p in shares), shares
    assert any(p["server_within"] is not None for p in shares), shares
    if "hostile inputs" in rows and rows["hostile inputs"]["result"] == "skip":
        assert "missing" in rows["hostile inputs"]["figure"]
