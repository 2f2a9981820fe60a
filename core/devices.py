"""Where an ONNX model runs: the device setting shared by export, the gate, the service and the
load test (`cpu`, `cuda`, or `auto`: CUDA when this onnxruntime can use it, else the CPU).

onnxruntime falls back to the CPU silently: onnxruntime-gpu lists the CUDA provider even when
the CUDA or cuDNN libraries cannot be loaded, and a session created with it then runs on the CPU
after logging an error. So a request for CUDA is checked twice, before the session (is there a
CUDA provider at all?) and after it (`session.get_providers()` is the truth), and refused with
one line naming what is missing, never served from the CPU under a GPU's name.

onnxruntime is imported inside the functions: `core` imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

DEVICES = ("cpu", "cuda", "auto")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class DeviceError(RuntimeError):
    """A device that was asked for and cannot be used here; the message says what to install."""


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    return device


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def resolve(device: str) -> str:
    """`cpu` or `cuda`: what `device` means on this machine. Raises DeviceError for `cuda`
    where this onnxruntime has no CUDA provider."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    if cuda_provider_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    import onnxruntime as ort

    raise DeviceError(
        f"device cuda: onnxruntime {ort.__version__} here has no {CUDA_PROVIDER} (providers: "
        f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu in place of "
        "onnxruntime (pip install --require-hashes -r requirements/gpu.lock; never both), "
        "or use device cpu"
    )


def providers(device: str) -> list[str]:
    """The provider list for an InferenceSession on a resolved device (`cpu` or `cuda`)."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]


def check_session(session: Any, device: str, what: str) -> None:
    """Refuse a session that asked for CUDA and got the CPU (onnxruntime's silent fallback)."""
    if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        raise DeviceError(
            f"{what}: {CUDA_PROVIDER} did not load and onnxruntime fell back to the CPU "
            "(its error is logged above: usually the CUDA or cuDNN libraries that this "
            "onnxruntime-gpu needs are missing from the library path); fix them or use "
            "device cpu"
        )
