"""Shared fixtures: tiny random checkpoints (built once per session) and fixed threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

# Fixed threads before torch is imported anywhere: with default threads a step on a busy
# 2-core machine ran ~50x slower (shared/STACK.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{"bert": dir, "llama": dir, "t5": dir}: tiny random checkpoints with local tokenizers."""
    pytest.importorskip("torch")
    from tests.tiny_models import make_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {style: make_tiny(root / style, style) for style in ("bert", "llama", "t5")}


@pytest.fixture(scope="session")
def service_app():
    """The service's ASGI app, built once per process: a second `Classifier.to_asgi()` would
    register BentoML's Prometheus metrics again (DuplicateTimeseries). Each module enters its
    own `TestClient(service_app)` after setting its environment: the lifespan builds a new
    `Classifier` from it, with that module's models."""
    import warnings

    with warnings.catch_warnings():
        # Not this code's: BentoML 1.4.40 uses APIs pydantic and pathspec deprecate.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*httpx2")
        from service.service import Classifier

        return Classifier.to_asgi()


# Variables a module's environment must not inherit from another module's app.
INHERITED = ("SMALLCLS_DEFAULT_MODEL", "SMALLCLS_AUTH_TOKEN", "SMALLCLS_MODELS_FILE")


@contextlib.contextmanager
def app_client(service_app: Any, env: Mapping[str, str]) -> Iterator[Any]:
    """A TestClient of the app entered with `env` set (and INHERITED unset): entering runs
    BentoML's lifespan, which builds a Classifier from that environment."""
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in INHERITED:
            mp.delenv(key, raising=False)
        with TestClient(service_app) as test_client:
            yield test_client
