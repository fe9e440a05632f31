"""Strict construction of the frozen dataclass configs from dicts (JSON files, checkpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type, TypeVar

C = TypeVar("C")


def config_from_dict(cls: Type[C], d: Dict[str, Any], what: str) -> C:
    """``cls(**d)``, but an unknown key is a ``ValueError`` naming the known ones, so that a typo
    in a config file fails loudly instead of being ignored. ``what`` names the section."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(names)}")
    return cls(**d)
