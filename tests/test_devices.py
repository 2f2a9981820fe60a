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
