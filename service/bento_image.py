"""What a Bento of the service installs: Python 3.11 and the service's hashed lock file.

Declared on the service (`@bentoml.service(image=...)`), where BentoML 1.4 reads it when it
builds. `requirements/service.lock` pins every package the service imports, with hashes (no
torch, no scikit-learn); it travels in the Bento (bentofile.yaml `include`) because BentoML
imports the service again when it serves one, and this module reads it then too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import bentoml

PYTHON_VERSION = "3.11"  # the version the lock was resolved for
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the Bento's `src` when served from one
REQUIREMENTS = PROJECT_DIR / "requirements" / "service.lock"
# The same lock with onnxruntime-gpu in place of onnxruntime (never both: they overwrite each
# other), for a Bento built with `--arg device=cuda` or `auto`.
GPU_REQUIREMENTS = PROJECT_DIR / "requirements" / "gpu.lock"


def requirements_for(device: str) -> Path:
    return REQUIREMENTS if device == "cpu" else GPU_REQUIREMENTS


def service_image(requirements: Path = REQUIREMENTS) -> bentoml.images.Image:
    if not requirements.is_file():
        raise FileNotFoundError(
            f"{requirements} is missing: the service's Python requirements are locked there "
            "(written by `make locks`); restore it from version control or rerun that"
        )
    # Not locked again at build time: the file is already a lock, and locking resolves
    # against an index, which would make `bentoml build` need the network.
    image = bentoml.images.Image(python_version=PYTHON_VERSION, lock_python_packages=False)
    # BentoML takes only a path relative to, and inside, the working directory; the service
    # is imported from anywhere (tests, `--working-dir`), so read it from the file's parent.
    with contextlib.chdir(requirements.parent):
        return image.requirements_file(requirements.name)
