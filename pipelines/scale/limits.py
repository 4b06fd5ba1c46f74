"""The grouping and pool thresholds, read from schemas/scale_limits.json so reviewers can diff them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import orjson

from pipelines.common.paths import shipped


@dataclass(frozen=True)
class Limits:
    group_files: int
    group_bytes: int
    group_resources: int
    pool_min_groups: int
    pool_min_bytes: int
    slice_units: int


@cache
def limits() -> Limits:
    data = orjson.loads((shipped("schemas") / "scale_limits.json").read_bytes())
    return Limits(**{k: int(v) for k, v in data.items() if k != "about"})
