"""The models a service worker serves: resolved, verified, warmed, and swapped on reload."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.manifest import MODEL_NAME, Manifest, ManifestError, verify_files
from service import admission
from service.batching import Batcher, BatchObserver
from service.runtime import OnnxClassifier
from service.settings import Settings

logger = logging.getLogger(__name__)

WARMUP_TEXTS = ("warm up", "a somewhat longer sentence to warm up a second input shape")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model entry points: a directory, and the store version if it came from one."""

    entry: str  # as configured
    path: Path
    store_version: str | None = None


def resolve(entry: str) -> Source:
    """A model directory, or a BentoML store reference `name:version` (or `name`, the latest):
    such a store model's directory is exactly an exported model directory."""
    path = Path(entry)
    if path.is_dir():
        return Source(entry, path.resolve())
    if "/" in entry or entry.startswith("."):
        raise ManifestError(
            f"model directory {entry} not found (looked at {path.absolute()}): give a "
            "directory written by `smallcls export`, or a BentoML store reference name:version"
        )
    import bentoml  # here: directories must resolve without touching the store

    try:
        model = bentoml.models.get(entry)
    except bentoml.exceptions.NotFound:
        raise ManifestError(
            f"{entry!r} is neither a model directory nor a model in the BentoML store "
            "(`bentoml models list`)"
        ) from None
    return Source(entry, Path(model.path), str(model.tag.version))


def check_entries(entries: Sequence[str]) -> None:
    """Each entry resolves to a model directory whose files match their manifest's sha256,
    without loading anything: what `bentoml serve` checks once, before starting workers."""
    for entry in entries:
        source = resolve(entry)
        verify_files(source.path, Manifest.read(source.path))


@dataclasses.dataclass(eq=False)
class LoadedModel:
    classifier: OnnxClassifier
    source: Source
    version: str
    batcher: Batcher

    @property
    def name(self) -> str:
        return self.classifier.name

    def info_labels(self) -> dict[str, str]:
        """The labels of the `smallcls_model_info` gauge (service.metrics.MODEL_INFO_LABELS)."""
        m = self.classifier.manifest
        return {
            "model": m.name,
            "version": self.version,
            "variant": m.variant or m.precision,  # manifests before variants named only this
            "precision": m.precision,
            "family": m.family,
            "base_model": m.base_model,
        }

    def facts(self) -> dict[str, Any]:
        """What `GET /models` says about the model: the manifest's key facts."""
        m = self.classifier.manifest
        return {
            "name": m.name,
            "version": self.version,
            "source": self.source.entry,
            "family": m.family,
            "head": m.head,
            "base_model": m.base_model,
            "precision": m.precision,
            "device": self.classifier.device,
            "problem_type": m.problem_type,
            "labels": list(m.labels),
            "thresholds": m.thresholds,
            "oos_label": m.decision.oos_label,
            "rejection_threshold": m.decision.rejection_threshold,
            "max_length": m.max_length,
            "truncation": m.preprocessing.truncation,
            "dataset": m.dataset.get("name"),
            "parameters": m.parameters,
            "accuracy": m.metrics.get("accuracy"),
            "source_run": m.source_run,
            "created_at": m.created_at,
            # Prompted label-word models: tokens of the prompt prefix encoded once at load.
            "prefix_cache_tokens": prefix.length if (prefix := self.classifier.prefix) else None,
            # Multi-task models: what each task answers with (`labels` above are its words).
            "tasks": {
                t.name: {"labels": t.labels, "prompt_template": t.prompt_template} for t in m.tasks
            },
        }


def load(
    entry: str, settings: Settings, observe: BatchObserver | None, reuse: dict[str, LoadedModel]
) -> LoadedModel:
    source = resolve(entry)
    previous = reuse.get(str(source.path))
    # Same directory: keep it (no second sha256 pass, no new session) unless its files
    # changed, which a new manifest hash shows.
    if (
        previous is not None
        and previous.source.store_version == source.store_version
        and Manifest.read(source.path).files == previous.classifier.manifest.files
    ):
        return previous
    classifier = OnnxClassifier(  # verifies sha256
        source.path,
        threads=settings.threads,
        spinning=settings.ort_spinning,
        device=settings.device,
    )
    for text in WARMUP_TEXTS:  # the first real request should not pay ORT's set-up
        classifier.logits_bucketed([text])
    version = source.store_version or classifier.manifest.files.get(MODEL_NAME, "")[:12]
    batcher = Batcher(
        classifier.name,
        classifier.score_batch,
        settings.batching_for(classifier.name),
        observe,
        admission.CONTROL,
    )
    logger.info(
        "loaded model %r version %s from %s (labels %s)",
        classifier.name,
        version,
        source.path,
        classifier.labels,
    )
    return LoadedModel(classifier, source, version, batcher)


def load_all(
    entries: Sequence[str],
    settings: Settings,
    observe: BatchObserver | None = None,
    reuse: dict[str, LoadedModel] | None = None,
) -> dict[str, LoadedModel]:
    """name -> model, in entry order. Raises ManifestError (or ValueError) naming the entry."""
    reuse = reuse or {}
    models: dict[str, LoadedModel] = {}
    for entry in entries:
        model = load(entry, settings, observe, reuse)
        if model.name in models:
            raise ManifestError(
                f"two models are named {model.name!r} ({models[model.name].source.entry} and "
                f"{entry}); give each a distinct manifest name"
            )
        models[model.name] = model
    return models


def by_path(models: dict[str, LoadedModel]) -> dict[str, LoadedModel]:
    return {str(m.source.path): m for m in models.values()}
