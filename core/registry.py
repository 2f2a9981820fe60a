"""Exported models in BentoML's model store, so the service can load `name:version`.

A stored model's directory (`bentoml.models.get(ref).path`) is a complete model directory:
`manifest.json`, `model.onnx`, `tokenizer.json` (plus BentoML's own `model.yaml`), and the
manifest is also the stored model's metadata, so `bentoml models get` shows the evidence.
Only models whose files match their sha256 and that passed the accuracy gate (or were
forced past it, which the manifest records) are registered.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from core.manifest import MANIFEST_NAME, Manifest, ManifestError, verify_files


@dataclasses.dataclass(frozen=True)
class StoredModel:
    tag: str  # "name:version"
    path: Path
    manifest: Manifest
    size_bytes: int
    created: str

    def row(self) -> dict[str, Any]:
        gate = self.manifest.gate or {}
        return {
            "tag": self.tag,
            "variant": self.manifest.variant or self.manifest.precision,
            "accuracy": self.manifest.metrics.get("accuracy"),
            "agreement": gate.get("agreement"),
            "forced": gate.get("forced", False),
            "size_mb": round(self.size_bytes / 1e6, 1),
            "created": self.created,
        }


def _store_name(name: str) -> str:
    # BentoML tags are lowercase; our names already are, but say so rather than mangle them.
    if name != name.lower():
        raise ValueError(f"model name {name!r} must be lowercase to be stored in BentoML")
    return name


def register(model_dir: Path | str) -> StoredModel:
    """Copy a model directory into the store; the manifest becomes the metadata."""
    import bentoml

    model_dir = Path(model_dir)
    manifest = Manifest.read(model_dir)
    verify_files(model_dir, manifest)
    gate = manifest.gate or {}
    if gate and not gate.get("passed") and not gate.get("forced"):
        raise ManifestError(
            f"{manifest.name} did not pass the accuracy gate ({'; '.join(gate.get('reasons', []))})"
            "; re-export it with --force to register it anyway"
        )
    names = [MANIFEST_NAME, *manifest.files]
    with bentoml.models.create(
        _store_name(manifest.name),
        labels={"family": manifest.family, "variant": manifest.variant or manifest.precision},
        metadata=manifest_metadata(manifest),
    ) as stored:
        root = Path(stored.path)
        for name in names:
            shutil.copy2(model_dir / name, root / name)
    return get(str(stored.tag))


def manifest_metadata(manifest: Manifest) -> dict[str, Any]:
    # BentoML metadata must be JSON-like and has no null; drop the None fields, nested too.
    def drop_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    return drop_none(dataclasses.asdict(manifest))


def _stored(model: Any) -> StoredModel:
    path = Path(model.path)
    return StoredModel(
        tag=str(model.tag),
        path=path,
        manifest=Manifest.read(path),
        size_bytes=sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        created=model.info.creation_time.isoformat(timespec="seconds"),
    )


def get(ref: str) -> StoredModel:
    """`name:version` or `name:latest` (or just `name`)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(ref)
    except NotFound:
        message = f"no model {ref!r} in the BentoML store; see `smallcls models list`"
        raise ValueError(message) from None
    return _stored(model)


def list_models(name: str | None = None) -> list[StoredModel]:
    """Every stored smallcls model (those with a manifest), newest first."""
    import bentoml

    out = []
    for model in bentoml.models.list(name):
        if (Path(model.path) / MANIFEST_NAME).is_file():
            out.append(_stored(model))
    return sorted(out, key=lambda m: m.created, reverse=True)


def remove(ref: str) -> str:
    import bentoml

    stored = get(ref)
    bentoml.models.delete(stored.tag)
    return stored.tag
