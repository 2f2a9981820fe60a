"""Shared fixtures: tiny random checkpoints (built once per session) and fixed threads."""

from __future__ import annotations

import os

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
