"""The prepared GPU check: on a machine without CUDA it stops at once with one line and writes
nothing; with a GPU that onnxruntime cannot use it says what to install; its figures file
renders what the phases measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check
from core import devices

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(devices.cuda_provider_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "figures"
    args = [sys.executable, "-m", "bench.gpu_check", "--out", str(out)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: ")
    assert lines[0].endswith(": nothing checked")
    assert not out.exists()


def test_a_gpu_onnxruntime_cannot_use_is_a_failure_naming_the_fix(monkeypatch, capsys, tmp_path):
    seen = gpu_check.Cuda(True, False, "NVIDIA H200", "")
    monkeypatch.setattr(gpu_check.devices, "cuda_provider_available", lambda: False)

    class FakeTorch:
        class cuda:  # torch.cuda
            is_available = staticmethod(lambda: True)
            get_device_name = staticmethod(lambda index: seen.gpu_name)

    monkeypatch.setitem(sys.modules, "torch", FakeTorch)
    assert gpu_check.main(["--out", str(tmp_path / "o")]) == 1
    line = capsys.readouterr().out.strip()
    assert "NVIDIA H200" in line and "onnxruntime-gpu" in line and "requirements/gpu.lock" in line
    assert not (tmp_path / "o").exists()


def test_figures_render_every_phase_and_name_the_price():
    figures = {
        "gpu": "NVIDIA H200",
        "when": "2026-12-01 12:00 UTC",
        "budget_s": 540,
        "elapsed_s": 311.5,
        "instance": "1x NVIDIA H200",
        "usd_per_hour": None,
        "gpu_tests": {"summary": "4 passed in 20.1s", "passed": True},
        "variants": [
            {
                "name": "minilm-fp16",
                "precision": "fp16",
                "accuracy": 0.8819,
                "agreement_vs_parent": 0.9989,
                "gate_checked_on": "cuda",
                "p95_ms": 7.0,
                "users": 32,
                "texts_per_s_at_slo": 2500.0,
                "usd_per_million": None,
            }
        ],
        "refused": [{"name": "smollm2-last-int8", "reasons": ["agrees on 97.1%"]}],
        "notes": ["accuracy cells not run: the budget was spent"],
    }
    text = gpu_check.render(figures)
    assert "no price (pass --usd-per-hour): texts/s only." in text
    assert "| minilm-fp16 | 88.19% | 99.89% | cuda | 7 | 32 | 2500.0 | n/a |" in text
    assert "refused: smollm2-last-int8: agrees on 97.1%" in text
    assert "GPU tests: 4 passed in 20.1s" in text
    priced = gpu_check.render({**figures, "usd_per_hour": 3.5})
    assert "at $3.5/hour." in priced


def test_the_budget_clock_counts_down():
    clock = gpu_check.Clock(10.0)
    assert 9.0 < clock.left() <= 10.0 and clock.elapsed() >= 0
