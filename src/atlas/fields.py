"""The check every config's ``from_dict`` shares: unknown keys are an error that lists the valid fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def check_known_fields(cls: type, data: Mapping[str, Any]) -> None:
    """Raise ValueError naming the keys of ``data`` that are not init fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields are {sorted(known)}")
