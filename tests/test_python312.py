"""The service on Python 3.12 (the GPU machines' Python): its hashed lock installs into a fresh
3.12 environment, and the service answers /classify there. Skipped where no python3.12 is
found; the first run downloads the lock's wheels (about 80 packages, no torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from service.launch import ServerProcess
from tests.fakes import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("python3.12", str(Path.home() / ".pyenv/versions/3.12.1/bin/python3.12"))


def _python312() -> str | None:
    for candidate in CANDIDATES:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if path and subprocess.run([path, "-c", "import sys"], capture_output=True).returncode == 0:
            return path
    return None


PYTHON312 = _python312()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(PYTHON312 is None, reason="no python3.12 on this machine"),
]


def test_the_service_lock_installs_and_serves_on_python_312(tmp_path):
    venv = tmp_path / "py312"
    subprocess.run([PYTHON312, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    install += ["--require-hashes", "-r", str(REPO / "requirements" / "service.lock")]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    version = subprocess.run(
        [str(python), "-c", "import sys, importlib.util as u; print(sys.version_info[:2], "
         "u.find_spec('torch') is None, u.find_spec('sklearn') is None)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version == "(3, 12) True True"
    model_dir = make_tiny_model_dir(tmp_path / "tiny")
    # `bentoml serve` from the 3.12 environment, the project on its path.
    env = {"PYTHONPATH": str(REPO), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    with ServerProcess([model_dir], extra_env=env, python=str(python)) as server:
        import httpx

        resp = httpx.post(f"{server.url}/classify", json={"texts": ["a great movie"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["label"] in ("negative", "positive")
