"""Strict loading of the contract records (preprocessing, decision rule) from JSON."""

from __future__ import annotations

import dataclasses
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
