"""The device setting: `auto` runs where it can, `cuda` on a machine without it is refused with
one line naming what to install, and a session that fell back to the CPU is never taken for a
GPU one."""

from __future__ import annotations

import pytest

from core import devices
from service.runtime import OnnxClassifier
from tests.fakes import make_tiny_model_dir

needs_no_cuda = pytest.mark.skipif(
    devices.cuda_provider_available(), reason="this onnxruntime has CUDA"
)


class _Session:
    def __init__(self, providers: list[str]) -> None:
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers


def test_unknown_device_is_refused_by_name():
    with pytest.raises(ValueError, match="one of cpu, cuda, auto; got 'gpu'"):
        devices.resolve("gpu")


@needs_no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_refused_with_what_to_install(tmp_path):
    assert devices.resolve("auto") == "cpu" and devices.resolve("cpu") == "cpu"
    with pytest.raises(devices.DeviceError, match=r"onnxruntime-gpu .*requirements/gpu\.lock"):
        devices.resolve("cuda")
    model_dir = make_tiny_model_dir(tmp_path / "m")
    assert OnnxClassifier(model_dir, device="auto").device == "cpu"
    with pytest.raises(devices.DeviceError, match="no CUDAExecutionProvider"):
        OnnxClassifier(model_dir, device="cuda")


def test_a_silent_fallback_to_the_cpu_is_refused():
    cpu_only = _Session(["CPUExecutionProvider"])
    with pytest.raises(devices.DeviceError, match="fell back to the CPU"):
        devices.check_session(cpu_only, "cuda", "model.onnx")
    devices.check_session(cpu_only, "cpu", "model.onnx")  # asked for the CPU: fine
    devices.check_session(_Session(["CUDAExecutionProvider", "CPUExecutionProvider"]), "cuda", "m")


def test_service_setting_is_checked_and_reported(tmp_path, monkeypatch):
    from service.settings import Settings

    model_dir = make_tiny_model_dir(tmp_path / "m")
    with pytest.raises(ValueError, match="got 'gpu'"):
        Settings.from_env({"SMALLCLS_MODELS": str(model_dir), "SMALLCLS_DEVICE": "gpu"})
    assert Settings.from_env({"SMALLCLS_MODELS": str(model_dir)}).device == "cpu"
    settings = Settings.from_env({"SMALLCLS_MODELS": str(model_dir), "SMALLCLS_DEVICE": "auto"})
    from service.models import load_all

    (loaded,) = load_all(settings.models, settings).values()
    assert loaded.facts()["device"] == devices.resolve("auto")


@needs_no_cuda
def test_service_asked_for_cuda_stops_at_start_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    model_dir = make_tiny_model_dir(tmp_path / "m")
    env = {
        **os.environ,
        "SMALLCLS_MODELS": str(model_dir),
        "SMALLCLS_DEVICE": "cuda",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("SMALLCLS_PREFLIGHT_DONE", None)
    args = [sys.executable, "-m", "bentoml", "serve", "service.service:Classifier", "--port", "0"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "the service cannot start: device cuda:" in done.stderr
    assert "requirements/gpu.lock" in done.stderr and "Traceback" not in done.stderr


@needs_no_cuda
def test_export_and_the_pipeline_refuse_cuda_before_any_work(tmp_path, capsys):
    from core.config import DemoConfig, TrainConfig
    from smallcls.cli import main
    from smallcls.demo import run_demo

    assert main(["export", str(tmp_path / "run"), "--device", "cuda"]) == 1
    assert "no CUDAExecutionProvider" in capsys.readouterr().err
    model = TrainConfig(name="m", family="encoder", base_model=str(tmp_path / "nowhere"))
    config = DemoConfig(models=[model], serve_device="cuda", output_dir=str(tmp_path / "out"))
    with pytest.raises(devices.DeviceError):
        run_demo(config, show_progress=False)
    assert not (tmp_path / "out").exists()  # refused before training


def test_gate_device_follows_the_setting(tmp_path):
    from export.scoring import where_to_check

    model_dir = make_tiny_model_dir(tmp_path / "m")
    assert where_to_check("int8", model_dir, "cpu")[0] == "cpu"
    assert where_to_check("int8", model_dir, "auto")[0] == "cpu"
    assert where_to_check("int8", model_dir, "cuda") == ("cuda", {"cpu": False, "gpu": True})
    device, verified_on = where_to_check("fp16", model_dir, "cpu")
    assert device == "cpu" and "device cpu asked for" in verified_on["notes"][0]


def test_a_cuda_provider_whose_libraries_cannot_load_is_refused_at_once(tmp_path, monkeypatch):
    """onnxruntime-gpu lists its CUDA provider even where cuBLAS or the driver are missing; the
    provider's library is loaded first, so `cuda` is refused naming what is missing and `auto`
    takes the CPU, instead of a session that silently falls back."""
    assert devices.cuda_library_problem(tmp_path) is None  # no such library: nothing to check
    (tmp_path / devices.CUDA_PROVIDER_LIBRARY).write_bytes(b"not a shared object")
    problem = devices.cuda_library_problem(tmp_path)
    assert problem and devices.CUDA_PROVIDER_LIBRARY in problem

    monkeypatch.setattr(devices, "cuda_provider_available", lambda: True)
    missing = "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    monkeypatch.setattr(devices, "cuda_library_problem", lambda capi_dir=None: missing)
    assert devices.resolve("auto") == "cpu"
    with pytest.raises(devices.DeviceError, match=r"cannot load here \(libcublasLt\.so\.13.*LD_"):
        devices.resolve("cuda")
    monkeypatch.setattr(devices, "cuda_library_problem", lambda capi_dir=None: None)
    assert devices.resolve("auto") == "cuda"
