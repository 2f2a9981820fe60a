"""The CUDA path: training with bf16/fp16 autocast on a GPU, then export on the CPU.

Skipped without CUDA (CI has none); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(
    ("style", "spec"),
    [
        ("bert", dict(family="encoder", head="mean_pool")),
        ("llama", dict(family="extracted_encoder", head="mean_pool", layers=2)),
        ("llama", dict(family="causal_lm", head="last_token")),
    ],
)
def test_cuda_training_then_cpu_export_matches(tiny_dirs, tmp_path, style, spec):
    from core.config import TrainConfig
    from export.onnx_export import export_run
    from tests.tiny_models import SST2_TEST, SST2_TRAIN
    from training.train import train

    config = TrainConfig(
        name="gpu",
        base_model=str(tiny_dirs[style]),
        train_path=str(SST2_TRAIN),
        test_path=str(SST2_TEST),
        train_rows=512,
        max_val_rows=64,
        learning_rate=1e-3,
        device="cuda",
        **spec,
    )
    run_dir = train(config, tmp_path / "runs", show_progress=False)
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["device"] == "cuda" and environment["cuda"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["device"] == "cuda"
    assert metrics["test"]["rows"] == 872

    # Forced: this test checks parity with torch, not whether tiny int8 passes the gate.
    fp32_dir, _ = export_run(run_dir, tmp_path / "models", parity_rows=64, force=True)
    manifest = json.loads((fp32_dir / "manifest.json").read_text())
    # Trained under autocast, the weights stay fp32: the CPU graph matches the CPU module.
    assert manifest["parity"]["max_abs_logit_diff_vs_torch"] < 1e-4
    # ...and agrees with the accuracy measured on the GPU up to bf16 rounding of logits.
    assert abs(manifest["metrics"]["accuracy"] - metrics["test"]["accuracy"]) < 0.02


def test_fp16_is_checked_on_cuda(tiny_dirs, tmp_path):
    """With onnxruntime-gpu, fp16 is scored by the gate on CUDA and says so."""
    from core.config import TrainConfig
    from core.devices import cuda_provider_available
    from core.manifest import Manifest
    from export.onnx_export import export_run
    from tests.tiny_models import SST2_TEST, SST2_TRAIN, sst2_slice
    from training.train import train

    if not cuda_provider_available():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider)")
    config = TrainConfig(
        name="gpu16",
        family="encoder",
        base_model=str(tiny_dirs["bert"]),
        train_path=str(sst2_slice(SST2_TRAIN, tmp_path / "train.jsonl", 256)),
        test_path=str(sst2_slice(SST2_TEST, tmp_path / "test.jsonl", 128)),
        max_val_rows=32,
        learning_rate=1e-3,
    )
    run_dir = train(config, tmp_path / "runs", show_progress=False)
    (fp16_dir,) = export_run(run_dir, tmp_path / "models", variants=("fp16",), force=True)
    manifest = Manifest.read(fp16_dir)
    assert manifest.verified_on["gpu"] is True and manifest.gate["checked_on"] == "cuda"
    assert manifest.gate["finite"] and manifest.gate["agreement"] >= 0.95
