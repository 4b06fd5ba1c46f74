"""The grouping and pool thresholds, read from schemas/scale_limits.json so reviewers can diff them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped


@dataclass(frozen=True)
class Limits:
    group_files: int
    group_bytes: int
    group_resources: int
    slice_bytes: int
    pool_min_groups: int
    pool_min_bytes: int
    slice_units: int
    writer_flush_mb: int
    small_run_bytes: int


def limits() -> Limits:
    """The shipped limits, with those a JSON file named by EHRLIFT_SCALE_LIMITS sets in their place."""
    return _read(
        str(shipped("schemas") / "scale_limits.json"), os.environ.get("EHRLIFT_SCALE_LIMITS") or None
    )


@cache
def _read(shipped_path: str, override: str | None) -> Limits:
    data = orjson.loads(Path(shipped_path).read_bytes())
    if override is not None:
        try:
            data.update(orjson.loads(Path(override).read_bytes()))
            return Limits(**{k: int(v) for k, v in data.items() if k != "about"})
        except (OSError, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"scale limits file is not usable ({type(exc).__name__})",
                hint="EHRLIFT_SCALE_LIMITS must name a JSON object of keys from schemas/scale_limits.json",
            ) from None
    return Limits(**{k: int(v) for k, v in data.items() if k != "about"})
