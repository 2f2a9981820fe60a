"""Strict loading of the records stages hand on as JSON files (manifest, run record, load
test summaries) and of the contract's parts (preprocessing, decision rule)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def from_fields(cls: Any, data: Any, where: str, error: type[ValueError]) -> Any:
    """A frozen dataclass from a JSON mapping; a wrong type, an unknown key or a missing one
    raises `error` naming `where` (the contract records must never half-load)."""
    if not isinstance(data, dict):
        raise error(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - known):
        raise error(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise error(f"incomplete {where}: {exc}") from exc


def read_json_object(
    path: Path, error: type[Exception], *, missing: str, todo: str = ""
) -> dict[str, Any]:
    """The JSON object in `path`; a missing file raises `error(missing)`, bad JSON or another
    JSON type raises `error` naming the file, with `todo` (what to do) after it."""
    if not path.is_file():
        raise error(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}{todo}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object{todo}")
    return data
