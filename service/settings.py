"""The service's settings, read from environment variables in this one place and validated."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

ENV_MODELS = "SMALLCLS_MODELS"
ENV_DEFAULT_MODEL = "SMALLCLS_DEFAULT_MODEL"
ENV_THREADS = "SMALLCLS_THREADS"
ENV_MAX_TEXTS = "SMALLCLS_MAX_TEXTS"
ENV_MAX_CHARS = "SMALLCLS_MAX_CHARS"
ENV_MAX_BATCH_SIZE = "SMALLCLS_MAX_BATCH_SIZE"
ENV_MAX_LATENCY_MS = "SMALLCLS_MAX_LATENCY_MS"


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """Adaptive batching of the model runner. Separate from `Settings` because BentoML reads
    these when the service class is defined (at import, also during `bentoml build`), where
    no model directories need to be configured."""

    max_batch_size: int = 32  # texts per model call; more queued texts wait for the next call
    # Upper bound on queueing + inference; BentoML answers 503 "overloaded" past it. 1000 ms
    # gave no 503s at 20 users where 100 ms refused 0.5% (see STACK.md).
    max_latency_ms: int = 1000

    def __post_init__(self) -> None:
        for field in ("max_batch_size", "max_latency_ms"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BatchingSettings:
        env = os.environ if environ is None else environ
        return cls(
            max_batch_size=_positive_int(env, ENV_MAX_BATCH_SIZE, cls.max_batch_size),
            max_latency_ms=_positive_int(env, ENV_MAX_LATENCY_MS, cls.max_latency_ms),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    model_dirs: tuple[Path, ...]
    default_model: str | None = None  # None: the first model directory's manifest name
    threads: int = 1  # onnxruntime intra-op threads per model
    max_texts: int = 64  # per request
    max_chars: int = 2000  # per text, counted in characters before tokenization
    batching: BatchingSettings = dataclasses.field(default_factory=BatchingSettings)

    def __post_init__(self) -> None:
        if not self.model_dirs:
            raise ValueError("model_dirs must name at least one model directory")
        for field in ("threads", "max_texts", "max_chars"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw_models = env.get(ENV_MODELS, "")
        model_dirs = tuple(Path(p) for p in raw_models.split(os.pathsep) if p.strip())
        if not model_dirs:
            raise ValueError(
                f"{ENV_MODELS} is {'empty' if ENV_MODELS in env else 'not set'}: set it to one "
                f"or more model directories written by `smallcls export`, separated by "
                f"{os.pathsep!r}"
            )
        return cls(
            model_dirs=model_dirs,
            default_model=env.get(ENV_DEFAULT_MODEL, "").strip() or None,
            threads=_positive_int(env, ENV_THREADS, cls.threads),
            max_texts=_positive_int(env, ENV_MAX_TEXTS, cls.max_texts),
            max_chars=_positive_int(env, ENV_MAX_CHARS, cls.max_chars),
            batching=BatchingSettings.from_env(env),
        )
