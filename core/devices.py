"""Where an ONNX model runs: the device setting shared by export, the gate, the service and the
load test (`cpu`, `cuda`, or `auto`: CUDA when this onnxruntime can use it, else the CPU).

onnxruntime falls back to the CPU silently: onnxruntime-gpu lists the CUDA provider even when
the CUDA or cuDNN libraries cannot be loaded, and a session created with it then runs on the CPU
after logging an error. So a request for CUDA is checked twice, before the session (is there a
CUDA provider at all?) and after it (`session.get_providers()` is the truth), and refused with
one line naming what is missing, never served from the CPU under a GPU's name. Before any
session, the CUDA provider's own library is loaded the way onnxruntime loads it: where a
library it links to (cuBLAS, the CUDA runtime, the driver) is not on the loader's path, that
names it at once, instead of a worker that fails at its first session and is restarted forever.

onnxruntime is imported inside the functions: `core` imports nothing heavy.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "cuda", "auto")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"  # onnxruntime-gpu on Linux


class DeviceError(RuntimeError):
    """A device that was asked for and cannot be used here; the message says what to install."""


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    return device


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def cuda_library_problem(capi_dir: Path | None = None) -> str | None:
    """Why the CUDA provider of this onnxruntime cannot load here (the loader's message, e.g.
    "libcublasLt.so.13: cannot open shared object file"), or None where it loads or where this
    build has no such library to check. Loading it creates no CUDA context."""
    if capi_dir is None:
        import onnxruntime as ort

        capi_dir = Path(ort.__file__).parent / "capi"
    # Not cached: a process that imports torch later has the libraries loaded by then.
    library = capi_dir / CUDA_PROVIDER_LIBRARY
    if not library.is_file():
        return None
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return None


def resolve(device: str) -> str:
    """`cpu` or `cuda`: what `device` means on this machine. Raises DeviceError for `cuda`
    where this onnxruntime has no CUDA provider, or has one whose libraries cannot load."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    if cuda_provider_available():
        problem = cuda_library_problem()
        if problem is None:
            return "cuda"
        if device == "auto":
            return "cpu"
        import onnxruntime as ort

        raise DeviceError(
            f"device cuda: onnxruntime {ort.__version__} has the {CUDA_PROVIDER} but it cannot "
            f"load here ({problem}): put the CUDA and cuDNN libraries it needs on the loader's "
            "path (LD_LIBRARY_PATH), or use device cpu"
        )
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
