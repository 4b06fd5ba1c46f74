"""The documented input bounds (schemas/input_limits.json), each overridable by EHRLIFT_LIMIT_<NAME>."""

from __future__ import annotations

import os
from functools import cache

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped


@cache
def _defaults() -> dict[str, dict]:
    return orjson.loads((shipped("schemas") / "input_limits.json").read_bytes())["limits"]


def limit(name: str) -> int:
    """The bound `name`: the environment's override when set, else the shipped default."""
    entry = _defaults()[name]
    raw = os.environ.get(f"EHRLIFT_LIMIT_{name.upper()}")
    if raw is None:
        return int(entry["value"])
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"EHRLIFT_LIMIT_{name.upper()} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"EHRLIFT_LIMIT_{name.upper()} must be at least 1")
    return value


def reason(name: str) -> str:
    """The reason code input past the bound `name` is quarantined with."""
    return _defaults()[name]["reason"]
